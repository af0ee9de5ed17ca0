"""Held-out evaluation before success: a run with validation data is evaluated before its first step (the base
model's held-out loss: the fresh adapter leaves the base's outputs unchanged) and at the end, and the job page
and API lead with "held-out loss: base X -> adapter Y"; a run that made it worse is flagged on its page, in the
API and in the history.
"""

from __future__ import annotations

import pytest

from tests.jobs.helpers import all_events, chat_records, launch, metric_steps, stored_job, upload, wait_until_finished


def test_a_run_with_a_validation_split_reports_the_base_and_the_adapter_held_out_loss(client, start_worker,
                                                                                       model_dir):
    start_worker()
    file_id = upload(client, chat_records(24))["id"]
    job = launch(client, model_dir, file_id, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                 training={"max_steps": 6, "batch_size": 4, "sequence_length": 64, "precision": "fp32",
                           "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "validation_split": 25,
                           "learning_rate": 5e-3, "held_out_samples": 3, "samples_at_checkpoints": True,
                           "sample_max_new_tokens": 8})
    finished = wait_until_finished(client, job["id"])
    assert finished["status"] == "succeeded", finished["error"]

    evaluated = {point["step"]: point["eval_loss"] for point in metric_steps(client, job["id"])
                 if point.get("eval_loss") is not None}
    assert sorted(evaluated) == [0, 3, 6]  # before the first step, then every eval_steps
    held = finished["held_out"]
    assert held["base_loss"] == pytest.approx(evaluated[0]) and held["adapter_loss"] == pytest.approx(evaluated[6])
    assert held["worse_than_base"] is (evaluated[6] > evaluated[0])
    messages = [event["message"] for event in all_events(client, job["id"])]
    assert f"Held-out loss of the base model, before training: {evaluated[0]:.4f}." in messages

    page = " ".join(client.get(f"/jobs/{job['id']}").text.split())
    assert f"Held-out loss: base {evaluated[0]:.4f} → adapter {evaluated[6]:.4f}" in page

    # The held-out prompts answered by the base and the adapter: at each checkpoint (asked for) and at the end, the
    # same prompts the playground offers as held-out rows, with their references.
    answers = client.get(f"/v1/fine_tuning/jobs/{job['id']}/held_out_answers").json()
    assert answers["step"] == 6 and answers["steps"] == [3, 6]
    rows = client.get("/playground/held-out", params={"job_id": job["id"]}).json()["rows"][:3]
    assert [answer["reference"] for answer in answers["data"]] == [row["reference"] for row in rows]
    assert [answer["prompt"]["messages"][-1]["content"] for answer in answers["data"]] == [row["user"] for row in rows]
    at_three = client.get(f"/v1/fine_tuning/jobs/{job['id']}/held_out_answers", params={"step": 3}).json()["data"]
    assert [a["base_answer"] for a in at_three] == [a["base_answer"] for a in answers["data"]]  # the base is the base
    missing = client.get(f"/v1/fine_tuning/jobs/{job['id']}/held_out_answers", params={"step": 4})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "step"
    assert "steps with answers: 3, 6" in missing.json()["error"]["message"]
    assert "Answered 3 held-out prompts with the base model and the adapter at step 6" in " ".join(messages)
    assert page.count('class="answer-row"') == 3 and "at step 6" in page
    block = client.get(f"/jobs/{job['id']}/held-out-answers", params={"step": 3}).text
    assert block.count('class="answer-row"') == 3 and '<option value="3" selected>' in block


def test_a_run_that_made_the_held_out_loss_worse_is_flagged_everywhere(client, account):
    worse = stored_job(account.team_id, status="succeeded", suffix="worse",
                       final_metrics={"loss": 0.4, "eval_loss": 2.25, "base_eval_loss": 1.5})
    better = stored_job(account.team_id, status="succeeded", suffix="better",
                        final_metrics={"loss": 0.4, "eval_loss": 1.0, "base_eval_loss": 1.5})
    without = stored_job(account.team_id, status="succeeded", suffix="plain", final_metrics={"loss": 0.4})
    answers = {job_id: client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["held_out"]
               for job_id in (worse, better, without)}
    assert answers[worse] == {"base_loss": 1.5, "adapter_loss": 2.25, "worse_than_base": True}
    assert answers[better]["worse_than_base"] is False and answers[without] is None
    assert "worse than the base model" in client.get(f"/jobs/{worse}").text
    assert "worse than the base model" not in client.get(f"/jobs/{better}").text
    history = client.get("/jobs").text
    assert history.count('class="worse-badge"') == 1
    row = history.split(f'data-job-id="{worse}"', 1)[1].split("</tr>", 1)[0]
    assert "worse than base" in row
