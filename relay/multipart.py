"""A small, strict multipart/form-data parser (RFC 7578) for the relay's upload endpoints.

The relay reads a request body whole and bounded first (Request.read_body with
RELAY_MAX_UPLOAD_BYTES), so this parses bytes in memory: it walks the body once with
bytes.find, copies each part's content once, and refuses anything it cannot read exactly
rather than guessing: a missing or malformed boundary, a part without its closing delimiter,
part headers over MAX_HEADER_BYTES, more than MAX_PARTS parts, a part without a
Content-Disposition name, a text field that is not UTF-8. Every refusal is a MultipartError
whose message says what was wrong (the relay answers it 400).

Nothing here imports Django, so the mock upstream and a Celery task can use it as well.
"""

from dataclasses import dataclass, field

MAX_PARTS = 64
MAX_HEADER_BYTES = 8 * 1024  # all headers of one part together
MAX_BOUNDARY_LENGTH = 70  # RFC 2046
MAX_FIELD_BYTES = 1024 * 1024  # a text field (the prompt); files have only the body's limit
_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not the multipart/form-data it says it is."""


@dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded file: the form field it came in, its file name and type, and its bytes."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Form:
    """The parsed form: text fields (a repeated name keeps every value, in order) and files."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)

    def value(self, name: str) -> str | None:
        """The last value of a text field, None when absent."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def files_named(self, *names: str) -> list[Upload]:
        return [upload for upload in self.files if upload.field in names]


def _split_params(header_value: str) -> tuple[str, dict[str, str]]:
    """`form-data; name="a"; filename="b.png"` → ("form-data", {"name": "a", ...}).

    Quoted strings may hold `;` and backslash escapes; the value before the first `;` is
    lower-cased, as are parameter names.
    """
    text = header_value
    head, _, rest = text.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError(f"a header parameter has no value: {rest[i:].strip()!r}")
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise MultipartError("a quoted header parameter is not closed")
                char = rest[i]
                if char == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                    chars.append(rest[i + 1])
                    i += 2
                    continue
                if char == '"':
                    i += 1
                    break
                chars.append(char)
                i += 1
            value = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            value = rest[i:end].strip()
            i = end
        if not name:
            raise MultipartError("a header parameter has no name")
        params[name] = value
    return head.strip().lower(), params


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data; boundary=…` Content-Type, or MultipartError."""
    kind, params = _split_params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError("The body must be multipart/form-data.")
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError("The multipart Content-Type has no boundary.")
    if len(boundary) > MAX_BOUNDARY_LENGTH or boundary.endswith(" "):
        raise MultipartError("The multipart boundary is invalid.")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MultipartError("The multipart boundary is invalid.") from exc


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or name != name.strip():
            raise MultipartError("A part has a malformed header line.")
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise MultipartError("A part header is not UTF-8.") from exc
        headers[name.decode("latin-1").lower()] = text
    return headers


def parse(
    body: bytes,
    content_type: str,
    *,
    max_parts: int = MAX_PARTS,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> Form:
    """Parse a whole multipart/form-data body (see the module docstring for what is refused)."""
    boundary = boundary_of(content_type)
    delimiter = b"--" + boundary
    # The first delimiter opens the body (a preamble before it is allowed and ignored).
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        found = body.find(_CRLF + delimiter)
        if found < 0:
            raise MultipartError("The body does not contain the multipart boundary.")
        position = found + 2 + len(delimiter)
    separator = _CRLF + delimiter
    form = Form()
    parts = 0
    while True:
        after = body[position : position + 2]
        if after == b"--":
            return form  # the closing delimiter; an epilogue after it is ignored
        # Transport padding (spaces, tabs) may follow a delimiter, then CRLF.
        while body[position : position + 1] in (b" ", b"\t"):
            position += 1
        if body[position : position + 2] != _CRLF:
            raise MultipartError("The multipart body ends before its closing boundary.")
        position += 2
        parts += 1
        if parts > max_parts:
            raise MultipartError(f"The form has more than {max_parts} parts.")
        if body[position : position + 2] == _CRLF:  # a part without headers
            headers, content_start = {}, position + 2
        else:
            head_end = body.find(b"\r\n\r\n", position, position + max_header_bytes + 4)
            if head_end < 0:
                if len(body) - position > max_header_bytes:
                    raise MultipartError(f"A part's headers exceed {max_header_bytes} bytes.")
                raise MultipartError("A part ends before its headers do.")
            headers = _part_headers(body[position:head_end])
            content_start = head_end + 4
        content_end = body.find(separator, content_start)
        if content_end < 0:
            raise MultipartError("A part is not terminated by the multipart boundary.")
        _add_part(form, headers, body[content_start:content_end])
        position = content_end + len(separator)


def _add_part(form: Form, headers: dict[str, str], data: bytes) -> None:
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise MultipartError("A part has no Content-Disposition header.")
    kind, params = _split_params(disposition)
    name = params.get("name")
    if kind != "form-data" or not name:
        raise MultipartError("A part's Content-Disposition is not form-data with a name.")
    filename = params.get("filename")
    if filename is not None:
        form.files.append(
            Upload(
                field=name,
                filename=filename,
                content_type=headers.get("content-type") or "application/octet-stream",
                data=data,
            )
        )
        return
    if len(data) > MAX_FIELD_BYTES:
        raise MultipartError(f"The field '{name}' exceeds {MAX_FIELD_BYTES} bytes.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MultipartError(f"The field '{name}' is not UTF-8 text.") from exc
    form.fields.setdefault(name, []).append(text)


def encode(fields: list[tuple[str, str]], files: list[Upload], boundary: str) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (what the relay sends upstream)."""
    delimiter = f"--{boundary}".encode()
    out: list[bytes] = []
    for name, value in fields:
        out += [
            delimiter,
            _CRLF,
            f'Content-Disposition: form-data; name="{_quote(name)}"'.encode(),
            b"\r\n\r\n",
            value.encode(),
            _CRLF,
        ]
    for upload in files:
        out += [
            delimiter,
            _CRLF,
            f'Content-Disposition: form-data; name="{_quote(upload.field)}"; '
            f'filename="{_quote(upload.filename)}"\r\n'
            f"Content-Type: {upload.content_type}".encode(),
            b"\r\n\r\n",
            upload.data,
            _CRLF,
        ]
    out += [delimiter, b"--\r\n"]
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _quote(text: str) -> str:
    # What browsers do (WHATWG): the quote and line breaks percent-encoded.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
