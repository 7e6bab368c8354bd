"""The relay's multipart/form-data parser: what clients send is read exactly, hostile or broken
bodies are refused with a reason, and what the relay re-encodes for the upstream reads back."""

import httpx
import pytest

from relay.multipart import (
    MAX_FIELD_BYTES,
    MultipartError,
    Upload,
    boundary_of,
    encode,
    parse,
)

CT = "multipart/form-data; boundary=XyZ"


def body(*parts: bytes, end: bytes = b"--XyZ--\r\n") -> bytes:
    return b"".join(b"--XyZ\r\n" + part + b"\r\n" for part in parts) + end


def field(name: str, value: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value


def test_it_reads_what_httpx_sends_fields_files_and_repeated_names():
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"model": "whisper-1", "timestamp_granularities[]": ["word", "segment"]},
        files={"file": ("speech.wav", b"RIFF\r\n--not-a-boundary\r\n\x00\xff", "audio/wav")},
    )
    content = request.read()

    form = parse(content, request.headers["content-type"])

    assert form.value("model") == "whisper-1"
    assert form.fields["timestamp_granularities[]"] == ["word", "segment"]
    assert form.files == [
        Upload("file", "speech.wav", "audio/wav", b"RIFF\r\n--not-a-boundary\r\n\x00\xff")
    ]


def test_encode_round_trips_through_parse():
    files = [Upload("image[]", 'a "quoted" name.png', "image/png", b"\x89PNG\r\n\r\n--b")]
    content, content_type = encode([("prompt", "héllo"), ("n", "2")], files, "b0undary")

    form = parse(content, content_type)

    assert form.fields == {"prompt": ["héllo"], "n": ["2"]}
    assert form.files == [Upload("image[]", "a %22quoted%22 name.png", "image/png", files[0].data)]


def test_a_preamble_and_an_epilogue_are_ignored():
    content = b"preamble\r\n" + body(field("a", b"1")) + b"epilogue"

    assert parse(content, CT).value("a") == "1"


def test_a_file_without_a_content_type_is_octet_stream():
    part = b'Content-Disposition: form-data; name="file"; filename="x.bin"\r\n\r\nabc'

    (upload,) = parse(body(part), CT).files

    assert (upload.content_type, upload.data) == ("application/octet-stream", b"abc")


def test_a_quoted_boundary_and_parameters_in_any_case_are_accepted():
    form = parse(body(field("a", b"1")), 'Multipart/Form-Data; Boundary="XyZ"')

    assert form.value("a") == "1"


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=", "no boundary"),
        ("multipart/mixed; boundary=XyZ", "must be multipart/form-data"),
        ("application/json", "must be multipart/form-data"),
        ("multipart/form-data; boundary=" + "x" * 71, "boundary is invalid"),
        ("multipart/form-data; boundary=é", "boundary is invalid"),
        ('multipart/form-data; boundary="XyZ', "not closed"),
        ("multipart/form-data; boundary", "has no value"),
    ],
)
def test_a_bad_content_type_is_refused(content_type, message):
    with pytest.raises(MultipartError, match=message):
        parse(body(field("a", b"1")), content_type)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "does not contain the multipart boundary"),
        (b"no boundary at all", "does not contain the multipart boundary"),
        (b"--XyZ\r\n" + field("a", b"unterminated"), "not terminated"),
        (b"--XyZ\r\n" + field("a", b"1") + b"\r\n--XyZ", "ends before its closing boundary"),
        (b"--XyZ\r\nContent-Disposition: form-data; name=a", "ends before its headers"),
        (body(b"\r\nvalue"), "no Content-Disposition"),
        (body(b"Content-Disposition: attachment\r\n\r\nv"), "not form-data with a name"),
        (body(b'Content-Disposition: form-data; filename="x"\r\n\r\nv'), "with a name"),
        (body(b"Content-Disposition form-data\r\n\r\nv"), "malformed header line"),
        (body(b" Content-Disposition: form-data; name=a\r\n\r\nv"), "malformed header line"),
        (body(field("a", b"\xff\xfe")), "not UTF-8"),
        (body(b"Content-Disposition: form-data; name=\xff\r\n\r\nv"), "not UTF-8"),
    ],
)
def test_a_broken_body_is_refused_with_its_reason(content, message):
    with pytest.raises(MultipartError, match=message):
        parse(content, CT)


def test_huge_part_headers_are_refused_without_reading_on():
    huge = b"X-Padding: " + b"a" * 10_000 + b"\r\n" + field("a", b"1")

    with pytest.raises(MultipartError, match="headers exceed 8192 bytes"):
        parse(body(huge), CT)


def test_a_part_header_without_its_end_is_refused_as_huge_when_it_is():
    content = b"--XyZ\r\nX-Padding: " + b"a" * 20_000

    with pytest.raises(MultipartError, match="headers exceed"):
        parse(content, CT)


def test_too_many_parts_are_refused():
    content = body(*[field(f"f{i}", b"v") for i in range(65)])

    with pytest.raises(MultipartError, match="more than 64 parts"):
        parse(content, CT)
    assert len(parse(content, CT, max_parts=65).fields) == 65


def test_an_oversized_text_field_is_refused_but_a_file_of_that_size_is_not():
    big = b"a" * (MAX_FIELD_BYTES + 1)
    file_part = b'Content-Disposition: form-data; name="file"; filename="f"\r\n\r\n' + big

    with pytest.raises(MultipartError, match="exceeds"):
        parse(body(field("prompt", big)), CT)
    assert len(parse(body(file_part), CT).files[0].data) == len(big)


def test_boundary_of_reads_the_boundary():
    assert boundary_of("multipart/form-data; charset=utf-8; boundary=abc") == b"abc"
