"""Preference pairs for DPO: OpenAI's layout and the prompt / chosen / rejected one (strings, messages, or whole
conversations sharing a prompt), each pair one example, and every refusal naming its line and field."""

from __future__ import annotations

import json

import pytest

from app.datasets.format_common import DatasetInvalid, Example
from app.datasets.held_out import held_out_turn
from app.datasets.validator import parse_dataset

USER = [{"role": "user", "content": "Name a colour."}]
SYSTEM = [{"role": "system", "content": "Be brief."}]


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def jsonl(*records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def problems(*records) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(DatasetInvalid) as caught:
        parse_dataset(jsonl(*records), "pairs.jsonl")
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def test_openai_preference_records():
    parsed = parse_dataset(jsonl({"input": {"messages": SYSTEM + USER}, "preferred_output": said("Blue."),
                                  "non_preferred_output": said("I like turtles.")}), "pairs.jsonl")
    assert parsed.format == "preference"
    [pair] = parsed.examples
    assert pair == Example(messages=tuple(SYSTEM + USER), chosen=tuple(said("Blue.")),
                           rejected=tuple(said("I like turtles.")), line=1)
    assert pair.kind() == "preference"
    summary = parsed.summary()
    assert summary["format"] == "preference" and summary["kinds"] == {"preference": 1}
    assert summary["characters"] == len("Be brief.Name a colour.Blue.I like turtles.")


def test_prompt_chosen_rejected_as_strings_and_as_messages():
    strings = parse_dataset(jsonl({"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                                  {"prompt": "3+3=", "chosen": "6", "rejected": "7"}), "pairs.jsonl")
    assert [(e.prompt, e.chosen, e.rejected) for e in strings.examples] == [("2+2=", "4", "5"), ("3+3=", "6", "7")]
    messages = parse_dataset(jsonl({"prompt": USER, "chosen": said("Red."), "rejected": said("Seven.")}),
                             "pairs.jsonl")
    assert messages.examples[0].messages == tuple(USER) and messages.examples[0].chosen == tuple(said("Red."))


def test_whole_conversations_share_their_prompt_up_to_the_last_user_turn():
    earlier = USER + said("Blue.") + [{"role": "user", "content": "Another?"}]
    parsed = parse_dataset(jsonl({"chosen": earlier + said("Green."), "rejected": earlier + said("No.")}),
                           "pairs.jsonl")
    [pair] = parsed.examples
    assert pair.messages == tuple(earlier)
    assert (pair.chosen, pair.rejected) == (tuple(said("Green.")), tuple(said("No.")))


@pytest.mark.parametrize(("record", "field", "message"), [
    ({"prompt": "2+2=", "chosen": "4", "rejected": "4"}, "rejected",
     "chosen and rejected are the same: a pair teaches nothing unless its answers differ"),
    ({"prompt": USER, "chosen": "Red.", "rejected": said("Seven.")}, "chosen",
     "chosen must be a list of assistant messages after a prompt of messages, not a string"),
    ({"prompt": "2+2=", "chosen": said("4"), "rejected": "5"}, "chosen",
     "chosen must be a string after a string prompt"),
    ({"prompt": USER + said("Blue."), "chosen": said("Red."), "rejected": said("No.")}, "prompt[1].role",
     "prompt[1] must be a user message: the prompt ends with the turn both answers reply to"),
    ({"prompt": USER, "chosen": USER, "rejected": said("No.")}, "chosen[0].role",
     "chosen[0] must be an assistant message"),
    ({"chosen": "4", "rejected": "5"}, "prompt", "prompt is missing: string answers need the prompt they answer"),
    ({"chosen": said("Red."), "rejected": said("Blue.")}, "prompt",
     "share no beginning that ends with a user message"),
    ({"chosen": USER, "rejected": USER + said("No.")}, "chosen", "chosen has no answer after the prompt"),
    ({"input": {"messages": USER}, "preferred_output": said("Blue.")}, "non_preferred_output",
     "non_preferred_output must be a list of {role, content} objects, not null"),
    ({"input": USER, "preferred_output": said("Blue."), "non_preferred_output": said("No.")}, "input",
     "input must be an object with messages, not an array"),
    ({"input": {"messages": USER}, "preferred_output": [{"role": "tool", "content": "x"}],
      "non_preferred_output": said("No.")}, "preferred_output[0].role", "tool calls are not supported yet"),
])
def test_each_refusal_names_its_line_and_field(record, field, message):
    # A valid first line of the same layout, so line 2 is judged on its own problem.
    if "input" in record:
        first = {"input": {"messages": USER}, "preferred_output": said("Blue."), "non_preferred_output": said("No.")}
    elif any(isinstance(record.get(key), str) for key in ("prompt", "chosen")):
        first = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    else:
        first = {"prompt": USER, "chosen": said("Red."), "rejected": said("Seven.")}
    found = problems(first, record)
    assert any(line == 2 and f == field and message in text for line, f, text in found), found


def test_string_and_message_pairs_do_not_mix_in_one_file():
    found = problems({"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                     {"prompt": USER, "chosen": said("Red."), "rejected": said("Seven.")})
    assert found == [(2, None, "line 2: expected a prompt/chosen/rejected (strings) record like line 1 (keys chosen "
                               "and rejected), found keys chosen, prompt, rejected")]


def test_a_pair_is_held_out_as_its_prompt_with_the_chosen_answer_for_reference():
    turn = held_out_turn(Example(messages=tuple(USER), chosen=tuple(said("Blue.")), rejected=tuple(said("No."))))
    assert turn.messages == tuple(USER) and turn.reference == "Blue."
    plain = held_out_turn(Example(prompt="2+2=", chosen="4", rejected="5"))
    assert plain.prompt == "2+2=" and plain.reference == "4"
