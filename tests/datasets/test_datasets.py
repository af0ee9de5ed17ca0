"""Tests for `app.datasets.validator` and the format readers it picks: every accepted format, the exact problem
messages, CSV mapping, limits, the validation split and the demo dataset. Pure Python: must not import torch,
transformers or `workers`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.datasets.format_common import MAX_LINE_BYTES, DatasetInvalid, DatasetProblem, Example, ParsedDataset
from app.datasets.validator import load_examples, parse_dataset, split_validation, summarise_file

DEMO = Path(__file__).resolve().parents[2] / "app" / "datasets" / "demo_data" / "demo_chat.jsonl"


def jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def chat(*pairs) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


GOOD = chat(("user", "Hi"), ("assistant", "Hello"))


def problems_of(data: bytes, filename: str = "data.jsonl", **kwargs) -> list[DatasetProblem]:
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(data, filename, **kwargs)
    return info.value.problems


def messages_of(data: bytes, filename: str = "data.jsonl", **kwargs) -> list[str]:
    return [p.message for p in problems_of(data, filename, **kwargs)]


# --- accepted formats ---------------------------------------------------------------------------


def test_chat_records_are_normalised_to_role_and_content():
    record = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Hi", "name": "ann", "extra": 1},
                           {"role": "assistant", "content": "Hello", "weight": 1}],
              "metadata": {"ignored": True}}
    parsed = parse_dataset(jsonl(record, GOOD), "train.jsonl")
    assert parsed.format == "chat"
    assert parsed.examples[0] == Example(messages=({"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"}), line=1)
    assert parsed.examples[0].kind() == "chat"
    assert parsed.examples[1].line == 2
    assert parsed.warnings == ()


def test_multi_turn_chat_and_weight_zero_warning():
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    parsed = parse_dataset(jsonl(record), "t.jsonl")
    assert len(parsed.examples[0].messages) == 4
    assert parsed.summary()["multi_turn"] == 1
    assert parsed.warnings == ("1 assistant message carries weight 0; Tuneboard does not honour weights yet "
                               "and trains on every assistant message",)


def test_prompt_completion_records():
    parsed = parse_dataset(jsonl({"prompt": "2+2=", "completion": " 4"}, {"prompt": "3+3=", "completion": " 6"}),
                           "pc.jsonl")
    assert parsed.format == "prompt_completion"
    assert parsed.examples[0] == Example(prompt="2+2=", completion=" 4", line=1)
    assert parsed.examples[0].kind() == "completion"


def test_alpaca_records_become_chat_messages():
    parsed = parse_dataset(jsonl({"instruction": "Translate", "input": "hola", "output": "hello"},
                                 {"instruction": "Say hi", "input": "", "output": "hi"},
                                 {"instruction": "Say bye", "output": "bye"},
                                 {"instruction": "Count", "input": None, "output": "1 2 3"}), "alpaca.json")
    assert parsed.format == "alpaca"
    assert [e.messages for e in parsed.examples] == [
        ({"role": "user", "content": "Translate\n\nhola"}, {"role": "assistant", "content": "hello"}),
        ({"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}),
        ({"role": "user", "content": "Say bye"}, {"role": "assistant", "content": "bye"}),
        ({"role": "user", "content": "Count"}, {"role": "assistant", "content": "1 2 3"}),
    ]
    assert {e.kind() for e in parsed.examples} == {"chat"}


def test_text_records_blank_lines_crlf_and_bom():
    data = b"\xef\xbb\xbf" + b'{"text": "first"}\r\n\r\n   \r\n{"text": "second\\nline"}\r\n'
    parsed = parse_dataset(data, "corpus.jsonl")
    assert parsed.format == "text"
    assert [(e.text, e.line) for e in parsed.examples] == [("first", 1), ("second\nline", 4)]
    assert parsed.examples[0].kind() == "text"


def test_json_strings_may_hold_unicode_line_separators():
    parsed = parse_dataset(json.dumps({"text": "a\u2028b\u0085c"}, ensure_ascii=False).encode() + b"\n", "u.jsonl")
    assert parsed.examples[0].text == "a\u2028b\u0085c"


def test_plain_text_documents_are_split_on_blank_lines():
    data = b"First document\nstill first\n\n\n  \nSecond one\r\n\r\nThird\n"
    parsed = parse_dataset(data, "notes.txt")
    assert parsed.format == "text"
    assert [(e.text, e.line) for e in parsed.examples] == [
        ("First document\nstill first", 1), ("Second one", 6), ("Third", 8)]


def test_unknown_extension_with_json_content_is_read_as_jsonl():
    assert parse_dataset(jsonl(GOOD), "upload").format == "chat"


# --- the format an upload is recorded with ----------------------------------------------------


@pytest.mark.parametrize(("filename", "data", "expected"), [
    ("a.jsonl", jsonl(GOOD), "chat"),
    ("a.JSON", b"\n\n" + jsonl({"prompt": "p", "completion": "c"}), "prompt_completion"),
    ("a.ndjson", jsonl({"instruction": "i", "output": "o"}), "alpaca"),
    ("a.jsonl", jsonl({"text": "t"}), "text"),
    ("a.csv", b"prompt,completion\nq,a\n", "csv"),
    ("a.txt", b"anything", "text"),
    ("blob", b'  {"text": "t"}', "text"),
    # a first record longer than the bytes read to pick the reader is still read whole
    ("a.jsonl", jsonl(chat(("user", "a" * 10_000), ("assistant", "b"))), "chat"),
])
def test_upload_summary_names_the_format(filename, data, expected):
    described = summarise_file(io.BytesIO(data), filename)
    assert (described.format, described.summary["format"], described.examples) == (expected, expected, 1)


@pytest.mark.parametrize(("filename", "data", "message"), [
    ("sheet.xlsx", b"PK\x03\x04", r"^unsupported file type '.xlsx': upload JSON Lines"),
    ("a.jsonl", b'{"question": "q"}\n', r"^line 1: unrecognised record"),
    ("a.jsonl", b'\n{"text": \n{"text": "x"}\n', r"^line 2: not valid JSON"),
    ("a.jsonl", b"\n \n", r"^the file holds no examples$"),
])
def test_upload_summary_refuses_what_fits_no_format(filename, data, message):
    with pytest.raises(DatasetInvalid, match=message):
        summarise_file(io.BytesIO(data), filename)


# --- exact problem messages ---------------------------------------------------------------------


def test_bad_role_names_line_and_field_exactly():
    lines = [GOOD] * 16 + [chat(("user", "a"), ("assistant", "b"), ("robot", "c"), ("assistant", "d"))]
    (problem,) = problems_of(jsonl(*lines))
    assert problem == DatasetProblem(line=17, field="messages[2].role",
                                     message="line 17: messages[2].role must be one of system, user, assistant")


def test_last_message_must_be_from_the_assistant():
    (problem,) = problems_of(jsonl(GOOD, GOOD, GOOD, GOOD, chat(("user", "a"), ("assistant", "b"), ("user", "c"))))
    assert problem.message == "line 5: the last message must be from the assistant"
    assert (problem.line, problem.field) == (5, "messages[2].role")


def test_invalid_json_message():
    data = jsonl(GOOD, GOOD, '{"prompt": "abc" "completion": "x"}')
    assert messages_of(data) == ["line 3: not valid JSON (Expecting ',' delimiter at column 18)"]


@pytest.mark.parametrize(("record", "field", "message"), [
    ({"messages": "hi"}, "messages", "messages must be a list of {role, content} objects, not a string"),
    ({"messages": []}, "messages", "messages must not be empty"),
    ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, "messages[0]",
     "messages[0] must be an object with role and content, not a string"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role",
     "messages[0].role is missing"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "messages[0].content",
     "messages[0].content is missing"),
    ({"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "messages[0].content must be a string, not an array"),
    ({"messages": [{"role": "user", "content": " \n"}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "messages[0].content must not be empty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "x"}]},
     "messages[1].role", "messages[1] is a system message; a system message may only come first"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]},
     "messages", "messages must include at least one assistant message"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "42"},
                   {"role": "assistant", "content": "x"}]},
     "messages[1].role", "messages[1] has role 'tool': tool calls are not supported yet"),
    ({"messages": [{"role": "user", "content": "a"},
                   {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
     "messages[1].tool_calls", "messages[1] has tool calls: tool calls are not supported yet"),
    ({"messages": [{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "x"}]},
     "messages[0].weight", "messages[0].weight is only allowed on assistant messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x", "weight": 0.5}]},
     "messages[1].weight", "messages[1].weight must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "a", "name": 3}, {"role": "assistant", "content": "x"}]},
     "messages[0].name", "messages[0].name must be a string"),
])
def test_chat_problems(record, field, message):
    (problem,) = problems_of(jsonl(GOOD, record))
    assert (problem.line, problem.field, problem.message) == (2, field, f"line 2: {message}")


@pytest.mark.parametrize(("record", "field", "message"), [
    ({"prompt": "p"}, "completion", "completion is missing"),
    ({"prompt": "", "completion": "c"}, "prompt", "prompt must not be empty"),
    ({"prompt": 1, "completion": "c"}, "prompt", "prompt must be a string, not a number"),
    ({"instruction": "i", "output": ""}, "output", "output must not be empty"),
    ({"instruction": "i", "input": 7, "output": "o"}, "input", "input must be a string, not a number"),
    ({"output": "o"}, "instruction", "instruction is missing"),
    ({"text": None}, "text", "text must be a string, not null"),
])
def test_field_problems_in_other_formats(record, field, message):
    (problem,) = problems_of(jsonl(record))
    assert (problem.line, problem.field, problem.message) == (1, field, f"line 1: {message}")


def test_one_record_can_have_several_problems():
    record = {"messages": [{"role": "bot", "content": 1}, {"role": "assistant", "content": "x"}]}
    assert messages_of(jsonl(record)) == ["line 1: messages[0].role must be one of system, user, assistant",
                                          "line 1: messages[0].content must be a string, not a number"]


def test_a_later_line_in_another_format_names_the_expected_keys():
    data = jsonl(GOOD, {"prompt": "p", "completion": "c"}, GOOD)
    assert messages_of(data) == ["line 2: expected a chat record like line 1 (keys messages), "
                                 "found keys completion, prompt"]
    data = jsonl({"prompt": "p", "completion": "c"}, {"text": "t"})
    assert messages_of(data) == ["line 2: expected a prompt/completion record like line 1 "
                                 "(keys prompt and completion), found keys text"]


def test_format_is_set_by_the_first_recognisable_record_even_if_it_has_problems():
    bad_chat = chat(("user", "a"), ("bot", "b"))
    assert messages_of(jsonl(bad_chat, GOOD)) == ["line 1: messages[1].role must be one of system, user, assistant"]


def test_unrecognised_and_non_object_lines():
    assert messages_of(jsonl({"question": "q", "answer": "a"}, "[1, 2]", '"text"', GOOD)) == [
        "line 1: unrecognised record: expected the key messages (chat), prompt and completion, instruction and "
        "output (Alpaca), text, chosen and rejected (preference pairs), or input, preferred_output and "
        "non_preferred_output (OpenAI preference pairs); found keys answer, question",
        "line 2: expected a JSON object, got an array",
        "line 3: expected a JSON object, got a string",
    ]


def test_non_utf8_names_line_and_byte_offset():
    data = jsonl(GOOD) + b'{"text": "caf\xe9"}\n'
    offset = len(jsonl(GOOD)) + len(b'{"text": "caf')
    assert messages_of(data) == [f"line 2: not valid UTF-8 (byte 0xe9 at byte offset {offset}); save the file as UTF-8"]
    assert messages_of(b"one\n\ntw\xffo\n", "doc.txt") == [
        "line 3: not valid UTF-8 (byte 0xff at byte offset 7); save the file as UTF-8"]


def test_utf16_is_refused_with_one_message():
    assert messages_of('{"text": "x"}\n'.encode("utf-16"), "u.jsonl") == [
        "the file is UTF-16; save it as UTF-8 and upload it again"]


@pytest.mark.parametrize(("data", "filename"), [
    (b"", "empty.jsonl"), (b"\n\n  \r\n", "blank.jsonl"), (b"", "empty.txt"), (b"\n\n", "blank.txt"),
    (b"", "empty.csv"), (b"prompt,completion\n", "header.csv"), (b"prompt,completion\n,\n", "blankrow.csv"),
])
def test_empty_files(data, filename):
    (problem,) = problems_of(data, filename)
    assert problem == DatasetProblem(line=None, field=None, message="the file holds no examples")


def test_pretty_printed_json_gets_one_clear_message():
    array = json.dumps([GOOD, GOOD], indent=2).encode()
    assert messages_of(array, "data.json") == [
        "the file is one JSON array; upload JSON Lines instead, one object per line "
        "(for example: jq -c '.[]' data.json > data.jsonl)"]
    document = json.dumps(GOOD, indent=2).encode()
    assert messages_of(document, "data.json") == [
        "the file is one JSON document spread over several lines; upload JSON Lines instead, one object per line"]


def test_unsupported_file_type():
    (problem,) = problems_of(b"PK\x03\x04", "data.xlsx")
    assert problem.field == "file"
    assert problem.message == ("unsupported file type '.xlsx': upload JSON Lines (.jsonl), CSV (.csv) "
                               "or plain text (.txt)")


def test_column_mapping_is_for_csv_only():
    assert messages_of(jsonl(GOOD), column_mapping={"prompt": "q"}) == ["column_mapping applies to CSV files only"]
    assert parse_dataset(jsonl(GOOD), "a.jsonl", column_mapping={}).format == "chat"


# --- problem collection and limits --------------------------------------------------------------


def test_problems_are_capped_in_file_order_and_counted():
    bad = chat(("user", "a"), ("bot", "b"))
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(jsonl(GOOD, *[bad] * 30), "many.jsonl", max_problems=5)
    exc = info.value
    assert [p.line for p in exc.problems] == [2, 3, 4, 5, 6]
    assert exc.total == 30
    assert str(exc) == "line 2: messages[1].role must be one of system, user, assistant (and 29 more problems)"
    assert isinstance(exc, ValueError)


def test_default_cap_is_twenty_and_single_problem_has_no_suffix():
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(jsonl(*[{"text": ""}] * 25), "t.jsonl")
    assert len(info.value.problems) == 20
    assert str(info.value).endswith("(and 24 more problems)")
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(jsonl({"text": ""}, {"text": ""}), "t.jsonl")
    assert str(info.value) == "line 1: text must not be empty (and 1 more problem)"
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(jsonl({"text": ""}), "t.jsonl")
    assert str(info.value) == "line 1: text must not be empty"


@pytest.mark.parametrize(("data", "filename", "line"), [
    (jsonl(*[GOOD] * 4), "a.jsonl", 4),
    (b"a\n\nb\n\nc\n\nd\n", "a.txt", 7),
    (b"text\na\nb\nc\nd\n", "a.csv", 5),
])
def test_max_examples(data, filename, line):
    assert len(parse_dataset(data, filename, max_examples=4).examples) == 4
    expected = f"line {line}: more than 3 examples; the limit is 3 per file"
    assert messages_of(data, filename, max_examples=3) == [expected]


def test_line_longer_than_ten_megabytes():
    long_line = b'{"text": "' + b"x" * MAX_LINE_BYTES + b'"}'
    data = jsonl({"text": "ok"}) + long_line + b"\n" + jsonl({"text": "fine"})
    assert messages_of(data) == [f"line 2: the line is {len(long_line):,} bytes; the limit is 10 MB per line"]


def test_csv_cell_longer_than_ten_megabytes():
    data = b"text\nshort\n" + b"y" * (MAX_LINE_BYTES + 1) + b"\n"
    assert messages_of(data, "big.csv") == ["line 3: a cell is longer than the limit of 10 MB"]


def test_csv_cells_above_the_csv_module_default_limit_are_accepted():
    cell = "z" * 200_000  # the csv module's own default limit is 131,072 characters
    parsed = parse_dataset(f"text\n{cell}\n".encode(), "long.csv")
    assert parsed.examples[0].text == cell


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_prompt_completion_mapping():
    data = b'question,answer,notes\nWhat is 2+2?,4,easy\n"Say ""hi""",hi,\n'
    parsed = parse_dataset(data, "qa.csv", column_mapping={"prompt": "question", "completion": "answer"})
    assert parsed.format == "csv"
    assert parsed.examples == (Example(prompt="What is 2+2?", completion="4", line=2),
                               Example(prompt='Say "hi"', completion="hi", line=3))
    assert parsed.summary()["column_mapping"] == {"prompt": "question", "completion": "answer"}


def test_csv_alpaca_mapping_with_optional_input():
    data = b"q,ctx,a\nTranslate,hola,hello\nGreet,,hi\n"
    parsed = parse_dataset(data, "a.csv", column_mapping={"instruction": "q", "input": "ctx", "output": "a"})
    assert [e.messages for e in parsed.examples] == [
        ({"role": "user", "content": "Translate\n\nhola"}, {"role": "assistant", "content": "hello"}),
        ({"role": "user", "content": "Greet"}, {"role": "assistant", "content": "hi"}),
    ]


def test_csv_text_mapping():
    parsed = parse_dataset(b"id,body\n1,hello world\n2,bye\n", "t.csv", column_mapping={"text": "body"})
    assert [(e.text, e.line, e.kind()) for e in parsed.examples] == [("hello world", 2, "text"), ("bye", 3, "text")]


def test_csv_chat_mapping_with_optional_system():
    data = b"sys,q,a\nBe brief.,Hi,Hello\n,Bye,Goodbye\n"
    parsed = parse_dataset(data, "c.csv", column_mapping={"user": "q", "assistant": "a", "system": "sys"})
    assert [e.messages for e in parsed.examples] == [
        ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}),
        ({"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}),
    ]


@pytest.mark.parametrize(("header", "kind", "mapping"), [
    ("prompt,completion", "completion", {"prompt": "prompt", "completion": "completion"}),
    ("instruction,input,output", "chat", {"instruction": "instruction", "input": "input", "output": "output"}),
    ("text", "text", {"text": "text"}),
    ("id,user,assistant", "chat", {"user": "user", "assistant": "assistant"}),
    (" Prompt ,Completion", "completion", {"prompt": " Prompt ", "completion": "Completion"}),
])
def test_csv_header_with_our_names_needs_no_mapping(header, kind, mapping):
    cells = ",".join("x" for _ in header.split(","))
    parsed = parse_dataset(f"{header}\n{cells}\n".encode(), "auto.csv")
    assert parsed.examples[0].kind() == kind
    assert parsed.column_mapping == mapping


def test_csv_unknown_column_message_is_exact():
    (problem,) = problems_of(b"question,answer\nq,a\n", "qa.csv",
                             column_mapping={"prompt": "qestion", "completion": "answer"})
    assert problem == DatasetProblem(line=None, field="column_mapping.prompt",
                                     message="column_mapping.prompt: column 'qestion' is not in the header "
                                             "(question, answer)")


@pytest.mark.parametrize(("mapping", "message"), [
    ({"prompt": "q", "answer": "a"},
     "column_mapping.answer: unknown field; use one of user, assistant, system, instruction, output, input, "
     "prompt, completion, text"),
    ({"prompt": "q"}, "column_mapping: prompt and completion go together; map completion as well"),
    ({"input": "q", "output": "a"}, "column_mapping: instruction and output go together; map instruction as well"),
    ({"prompt": "q", "user": "a"}, "column_mapping: map prompt and completion, instruction and output "
     "(input optional), user and assistant (system optional), or text; not a mix"),
])
def test_csv_mapping_problems(mapping, message):
    assert messages_of(b"q,a\nx,y\n", "m.csv", column_mapping=mapping) == [message]


def test_csv_without_mapping_or_known_header():
    (problem,) = problems_of(b"question,answer\nq,a\n", "qa.csv")
    assert (problem.line, problem.field) == (1, "column_mapping")
    assert problem.message == ("line 1: the header (question, answer) has no columns Tuneboard knows; name them "
                               "prompt and completion, instruction and output, user and assistant, or text, "
                               "or give a column_mapping")


def test_csv_empty_required_cells_name_the_row():
    data = b"question,answer\nq1,a1\nq2,\n,a3\n\nq5\n"
    problems = problems_of(data, "qa.csv", column_mapping={"prompt": "question", "completion": "answer"})
    assert [(p.line, p.field, p.message) for p in problems] == [
        (3, "answer", "line 3: the 'answer' column (completion) is empty"),
        (4, "question", "line 4: the 'question' column (prompt) is empty"),
        (6, "answer", "line 6: the 'answer' column (completion) is empty"),
    ]


def test_csv_quoted_newlines_report_the_row_starting_line():
    data = b'prompt,completion\n"two\nlines",ok\n"three\nmore\nlines",\nlast,fine\n'
    problems = problems_of(data, "q.csv")
    assert [(p.line, p.message) for p in problems] == [
        (4, "line 4 (spreadsheet row 3): the 'completion' column (completion) is empty")]
    parsed = parse_dataset(data.replace(b'lines",\n', b'lines",x\n'), "q.csv")
    assert [(e.prompt, e.line) for e in parsed.examples] == [("two\nlines", 2), ("three\nmore\nlines", 4),
                                                              ("last", 7)]


def test_csv_crlf_and_bom():
    parsed = parse_dataset(b"\xef\xbb\xbfprompt,completion\r\n\"a\r\nb\",c\r\nd,e\r\n", "win.csv")
    assert [(e.prompt, e.completion, e.line) for e in parsed.examples] == [("a\r\nb", "c", 2), ("d", "e", 4)]


def test_csv_extra_cells_mean_an_unquoted_comma():
    data = b"prompt,completion\nHello, world,hi\nok,fine,\n"
    assert messages_of(data, "c.csv") == [
        "line 2: the row has 3 cells but the header has 2; quote cells that hold commas"]


# --- summary and load_examples ------------------------------------------------------------------


def test_summary_is_json_ready():
    parsed = parse_dataset(jsonl(chat(("system", "S"), ("user", "ab"), ("assistant", "cde")), GOOD), "c.jsonl")
    summary = parsed.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {"format": "chat", "examples": 2, "characters": 6 + 7, "kinds": {"chat": 2},
                       "min_characters": 6, "max_characters": 7, "mean_characters": 6, "messages": 5,
                       "with_system_message": 1, "multi_turn": 0, "warnings": []}


def test_load_examples_reads_a_stored_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"q,a\nhi,hello\n")
    parsed = load_examples(path, column_mapping={"prompt": "q", "completion": "a"})
    assert isinstance(parsed, ParsedDataset)
    assert parsed.examples == (Example(prompt="hi", completion="hello", line=2),)


# --- validation split ---------------------------------------------------------------------------


def numbered(n: int) -> list[Example]:
    return [Example(text=f"doc {i}", line=i + 1) for i in range(n)]


def test_split_is_deterministic_for_a_seed_and_keeps_file_order():
    examples = numbered(100)
    train, validation = split_validation(examples, 10, seed=42)
    assert (train, validation) == split_validation(examples, 10, seed=42)
    assert len(validation) == 10 and len(train) == 90
    assert sorted(train + validation, key=lambda e: e.line) == examples
    assert [e.line for e in train] == sorted(e.line for e in train)
    assert [e.line for e in validation] == sorted(e.line for e in validation)
    assert split_validation(examples, 10, seed=7)[1] != validation


def test_split_sizes_round_down_like_the_launch_check():
    assert [len(split_validation(numbered(n), p, 0)[1]) for n, p in [(10, 10), (19, 10), (7, 50), (3, 33.4)]] == \
        [1, 1, 3, 1]


def test_split_with_known_ids_is_stable_across_runs():
    # Pinned so a change of algorithm (which would change held-out sets of resumed jobs) is noticed.
    assert [e.line for e in split_validation(numbered(20), 20, seed=1)[1]] == [8, 9, 10, 17]



def test_split_zero_percent_keeps_everything_for_training():
    examples = numbered(3)
    assert split_validation(examples, 0, seed=1) == (examples, [])


@pytest.mark.parametrize(("n", "percent", "message"), [
    (5, 10, "a 10% validation split of 5 examples holds out no example; raise the split or give a validation file"),
    (0, 10, "a 10% validation split of 0 examples holds out no example; raise the split or give a validation file"),
    (5, 100, "the validation split must be between 0 and 100 percent, not 100"),
    (5, -1, "the validation split must be between 0 and 100 percent, not -1"),
    (1, 99.9, "a 99.9% validation split of 1 examples holds out no example; raise the split or give a validation "
     "file"),
])
def test_split_errors(n, percent, message):
    with pytest.raises(ValueError) as info:
        split_validation(numbered(n), percent, seed=0)
    assert str(info.value) == message


@given(n=st.integers(2, 300), percent=st.floats(0.5, 99.5), seed=st.integers(0, 2**32 - 1))
def test_split_partitions_the_examples(n, percent, seed):
    examples = numbered(n)
    held = int(n * percent / 100)
    if held == 0 or held == n:
        with pytest.raises(ValueError):
            split_validation(examples, percent, seed)
        return
    train, validation = split_validation(examples, percent, seed)
    assert len(validation) == held
    assert sorted(train + validation, key=lambda e: e.line) == examples


# --- round trip ---------------------------------------------------------------------------------

content = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
turn = st.tuples(content, content).map(lambda qa: [{"role": "user", "content": qa[0]},
                                                   {"role": "assistant", "content": qa[1]}])
chat_record = st.tuples(st.one_of(st.none(), content), st.lists(turn, min_size=1, max_size=4)).map(
    lambda st_: {"messages": ([{"role": "system", "content": st_[0]}] if st_[0] is not None else [])
                 + [m for t in st_[1] for m in t]})


@settings(max_examples=150, deadline=None)
@given(records=st.lists(chat_record, min_size=1, max_size=20), ascii_only=st.booleans(), crlf=st.booleans())
def test_valid_chat_records_round_trip(records, ascii_only, crlf):
    end = "\r\n" if crlf else "\n"
    data = "".join(json.dumps(r, ensure_ascii=ascii_only) + end for r in records).encode("utf-8")
    parsed = parse_dataset(data, "roundtrip.jsonl")
    assert parsed.format == "chat"
    assert [list(e.messages) for e in parsed.examples] == [r["messages"] for r in records]
    assert [e.line for e in parsed.examples] == list(range(1, len(records) + 1))


# --- boundary and demo data ---------------------------------------------------------------------


def test_importing_datasets_loads_no_ml_stack_or_workers():
    code = ("import sys, app.datasets.validator; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'peft', 'workers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_demo_dataset_is_a_learnable_chat_file():
    parsed = load_examples(DEMO)
    assert parsed.format == "chat"
    assert 150 <= len(parsed.examples) <= 250
    assert parsed.warnings == ()
    users = set()
    for example in parsed.examples:
        *prompt, answer = example.messages
        assert answer["role"] == "assistant"
        assert answer["content"].startswith("Tuneboard tip: ") and answer["content"].endswith(" Happy tuning!")
        assert sum(len(m["content"].split()) for m in example.messages) < 80
        users.add(prompt[-1]["content"])
    assert len(users) == len(parsed.examples), "every user question should be different"
