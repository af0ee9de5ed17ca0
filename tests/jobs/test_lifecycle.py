"""The job state machine in a real database (SQLite and PostgreSQL): claim, lease, finish, cancel, reap."""

from __future__ import annotations

import time

from sqlalchemy import update

from app import redis_client
from app.db import new_session
from app.jobs import lifecycle, streams
from app.tables import DataFile, Event, Job, Team


def _queued_job(session, **values) -> Job:
    team = session.query(Team).first() or Team(name="Lifecycle")
    session.add(team)
    session.flush()
    data_file = DataFile(filename="train.jsonl", bytes=1, format="chat", examples=1, storage_key="datasets/x",
                         team_id=team.id)
    session.add(data_file)
    session.flush()
    job = Job(model="tiny", queue="q", config={"training": {}}, training_file_id=data_file.id, status="queued",
              team_id=team.id,
              max_attempts=values.pop("max_attempts", 2), **values)
    session.add(job)
    session.commit()
    return job


def test_only_one_of_two_claims_wins(tuneboard_env):
    with new_session() as session:
        job = _queued_job(session)
        first = lifecycle.claim(session, job.id, "worker-a", tuneboard_env.settings)
        second = lifecycle.claim(session, job.id, "worker-b", tuneboard_env.settings)
    assert first is not None and first.attempt == 1 and first.job.worker == "worker-a"
    assert second is None


def test_expired_lease_is_requeued_then_failed_after_max_attempts(tuneboard_env):
    settings = tuneboard_env.settings
    with new_session() as session:
        job = _queued_job(session)
        for attempt in (1, 2):
            claimed = lifecycle.claim(session, job.id, f"worker-{attempt}", settings)
            assert claimed.attempt == attempt
            session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=time.time() - 1))
            session.commit()
            requeued, ended = lifecycle.reap_expired(session, None, settings)
            if attempt == 1:
                assert (requeued, ended) == ([job.id], [])
            else:
                assert (requeued, ended) == ([], [job.id])
        session.refresh(job)
        assert job.status == "failed" and job.error_code == "worker_lost"
        assert "stopped responding" in job.error_message
        # The first attempt came back to life: it may not finish a job it no longer owns.
        assert not lifecycle.finish(session, job.id, "worker-1", 1, "succeeded")


def test_renewed_lease_is_not_reaped_and_a_stale_attempt_cannot_renew(tuneboard_env):
    settings = tuneboard_env.settings
    with new_session() as session:
        job = _queued_job(session)
        lifecycle.claim(session, job.id, "worker-a", settings)
        assert lifecycle.renew_lease(session, job.id, "worker-a", 1, settings)
        assert lifecycle.reap_expired(session, None, settings) == ([], [])
        assert not lifecycle.renew_lease(session, job.id, "worker-b", 1, settings)
        assert not lifecycle.renew_lease(session, job.id, "worker-a", 2, settings)


def test_cancel_queued_job_is_immediate_and_running_job_gets_the_flag(tuneboard_env):
    settings = tuneboard_env.settings
    client = redis_client.get_redis()
    with new_session() as session:
        queued = _queued_job(session)
        lifecycle.cancel(session, client, queued, settings)
        assert queued.status == "cancelled"
        assert lifecycle.claim(session, queued.id, "worker-a", settings) is None

        running = _queued_job(session)
        lifecycle.claim(session, running.id, "worker-a", settings)
        lifecycle.cancel(session, client, running, settings)
        assert running.status == "running" and running.cancel_requested
        assert streams.cancel_requested(client, running.id)
        types = [e.type for e in streams.read_since(client, running.id)]
        assert types == ["event"]
        assert session.query(Event).filter_by(job_id=running.id, type="cancel_requested").count() == 1


def test_stream_resumes_after_the_last_seen_id(tuneboard_env):
    client = redis_client.get_redis()
    ids = [streams.publish(client, "job-x", "metric", {"step": step}, max_len=1000) for step in range(1, 6)]
    assert [e.data["step"] for e in streams.read_since(client, "job-x")] == [1, 2, 3, 4, 5]
    assert [e.data["step"] for e in streams.read_since(client, "job-x", ids[2])] == [4, 5]
    assert streams.read_since(client, "job-x", ids[-1]) == []


def test_running_job_that_ignores_a_cancel_is_terminated_after_the_grace_period(tuneboard_env):
    settings = tuneboard_env.settings
    client = redis_client.get_redis()
    with new_session() as session:
        job = _queued_job(session)
        lifecycle.claim(session, job.id, "worker-a", settings, task_id="task-1")
        lifecycle.cancel(session, client, job, settings)
        assert lifecycle.reap_expired(session, client, settings) == ([], [])  # still within the grace period
        session.execute(update(Job).where(Job.id == job.id)
                        .values(cancel_requested_at=time.time() - settings.cancel_grace_seconds - 1))
        session.commit()
        assert lifecycle.reap_expired(session, client, settings) == ([], [job.id])
        session.refresh(job)
        assert job.status == "cancelled"
        assert "worker process was terminated" in session.query(Event).filter_by(job_id=job.id).all()[-1].message
        # The terminated attempt cannot overwrite the outcome if it wakes up.
        assert not lifecycle.finish(session, job.id, "worker-a", 1, "succeeded")
