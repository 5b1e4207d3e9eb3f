#!/usr/bin/env python3
"""Writes the HTTP/1.1 framing corpus: one malformed request per file.

Each file is `<expected>-<name>.http`, where <expected> is the status the
gateway must answer (400, 413, 414, 431, 501), or `safe`: answered 200,
and what reaches the upstream has exactly one framing (no case is `safe`
at present; the test keeps the check for ambiguities the gateway resolves
rather than refuses). The bytes are written escaped, so that editors
and git cannot change them: `\\r`, `\\n`, `\\t`, `\\0`, `\\\\` and `\\xHH`;
real line breaks in a file are ignored. tests/it/framing.rs sends each
one to a real gateway in front of a byte-counting upstream, which must
receive nothing from any refused one.

Run it again after adding cases: python3 tests/corpus/framing/generate.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
cases = {}


def case(expected, name, raw):
    key = f"{expected}-{name}"
    assert key not in cases, key
    cases[key] = raw


def req(head_lines, body=b"", line=b"POST /f HTTP/1.1"):
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in head_lines) + b"\r\n" + body


H = b"Host: gw"
# --- Content-Length together with Transfer-Encoding, both orders ---------
# hyper reads these as chunked and drops the Content-Length; the gateway's
# sniffer (host/src/sniff.rs) sees both on the wire and refuses them.
for i, (a, b) in enumerate([
    (b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: chunked", b"Content-Length: 5"),
    (b"Content-Length: 0", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
    (b"Content-Length: 100", b"Transfer-Encoding: chunked"),
]):
    case(400, f"cl-and-te-{i}", req([H, a, b], b"0\r\n\r\n"))
case(400, "cl-and-te-gzip-chunked", req([H, b"Content-Length: 5", b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"))
case(400, "cl-and-te-two-headers", req([H, b"Transfer-Encoding: gzip", b"Content-Length: 4", b"Transfer-Encoding: chunked"], b"0\r\n\r\n"))
case(400, "cl-and-te-upper", req([H, b"CONTENT-LENGTH: 5", b"TRANSFER-ENCODING: chunked"], b"0\r\n\r\n"))
case(400, "cl-and-te-get", req([H, b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n", b"GET /f HTTP/1.1"))
# --- Content-Length oddities -------------------------------------------
for i, v in enumerate([b"5, 6", b"5,5", b"+5", b"-5", b"0x5", b"5.0", b"5e0", b"five", b"5 5", b"05a",
                       b"", b" ", b"18446744073709551616", b"99999999999999999999999", b"5\x00"]):
    case(400, f"cl-bad-value-{i}", req([H, b"Content-Length: " + v], b"hello"))
case(400, "cl-duplicate-differing", req([H, b"Content-Length: 5", b"Content-Length: 6"], b"hello!"))
# hyper keeps one of several equal Content-Length fields: refused likewise.
case(400, "cl-duplicate-equal", req([H, b"Content-Length: 5", b"Content-Length: 5"], b"hello"))
case(400, "cl-duplicate-three", req([H, b"Content-Length: 1", b"Content-Length: 1", b"Content-Length: 1"], b"h"))
# --- Transfer-Encoding oddities -----------------------------------------
for i, v in enumerate([b"chunked, gzip", b"gzip", b"identity", b"chunked, chunked", b"xchunked", b"chunked;q=1",
                       b"chunk", b"\"chunked\"", b"chunked\x0b", b"chunked,", b",chunked", b"gzip, chunked, identity",
                       b"c\x00hunked", b"compress", b"deflate"]):
    # chunked missing, not last, or not alone: the length cannot be known (RFC 9112 §6.3)
    case(400, f"te-bad-{i}", req([H, b"Transfer-Encoding: " + v], b"0\r\n\r\n"))
# a coding the gateway does not implement before chunked (RFC 9112 §6.1)
case(501, "te-gzip-then-chunked", req([H, b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"))
case(501, "te-deflate-then-chunked", req([H, b"Transfer-Encoding: deflate, chunked"], b"0\r\n\r\n"))
case(400, "te-space-before-colon", req([H, b"Transfer-Encoding : chunked"], b"0\r\n\r\n"))
case(400, "te-tab-before-colon", req([H, b"Transfer-Encoding\t: chunked"], b"0\r\n\r\n"))
case(400, "te-obs-fold", req([H, b"Transfer-Encoding: gzip,", b" chunked"], b"0\r\n\r\n"))
case(400, "te-on-http10", req([H, b"Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n", b"POST /f HTTP/1.0"))
case(400, "te-on-http10-with-cl", req([H, b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"hello", b"POST /f HTTP/1.0"))
case(400, "te-duplicate-chunked", req([H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], b"0\r\n\r\n"))
case(400, "te-name-with-nul", req([H, b"Transfer-Enc\x00oding: chunked"], b"0\r\n\r\n"))
# --- chunk framing ---------------------------------------------------------
TE = b"Transfer-Encoding: chunked"
for i, body in enumerate([
    b"g\r\nhello\r\n0\r\n\r\n",                 # not hex
    b"-5\r\nhello\r\n0\r\n\r\n",                # negative
    b"+5\r\nhello\r\n0\r\n\r\n",                # signed
    b"0x5\r\nhello\r\n0\r\n\r\n",               # 0x prefix
    b"5 5\r\nhello\r\n0\r\n\r\n",               # space inside
    b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",   # overflow
    b"5\r\nhelloX\r\n0\r\n\r\n",                # data longer than size
    b"5\rhello\r\n0\r\n\r\n",                   # bare CR after size
    b"\r\nhello\r\n0\r\n\r\n",                  # empty size
    b"5\r\nhello0\r\n\r\n",                     # missing CRLF after data
]):
    case(400, f"chunk-bad-{i}", req([H, TE], body))
case(400, "chunk-extension-oversized", req([H, TE], b"5;" + b"a" * 70000 + b"\r\nhello\r\n0\r\n\r\n"))
# (A NUL inside a chunk extension is not refused: hyper drops chunk
# extensions, and the body is re-chunked upstream, so nothing of it travels.)
case(400, "chunk-extension-bare-lf-in-ext", req([H, TE], b"5;a\nb\r\nhello\r\n0\r\n\r\n"))
# --- header syntax ------------------------------------------------------------
for i, h in enumerate([
    b"X-A : 1",                 # space before colon
    b"X-A\t: 1",                # tab before colon
    b" X-A: 1",                 # leading space (obs-fold of nothing)
    b"X-A: 1\r\n continued",    # obs-fold
    b"X-A: 1\r\n\tcontinued",   # obs-fold with tab
    b"X-A: a\x00b",             # NUL in value
    b"X-A: a\rb",               # bare CR in value
    b"X-\x00A: 1",              # NUL in name
    b"X A: 1",                  # space in name
    b"X-A",                     # no colon
    b": 1",                     # empty name
    b"X-A:\x7f",                # DEL in value
    b"X(A): 1",                 # separator in name
    b"X-A\x01: 1",              # control in name
    b"\x80X-A: 1",              # non-ASCII in name
    b"X-A: 1\rX-B: 2",          # bare CR between headers
]):
    case(400, f"header-bad-{i}", req([H, b"Content-Length: 0", h]))
case(400, "host-missing-http11", req([b"Content-Length: 0"]))
case(400, "host-duplicate", req([H, b"Host: other", b"Content-Length: 0"]))
case(400, "host-bad-chars", req([b"Host: g w", b"Content-Length: 0"]))
case(400, "host-with-path", req([b"Host: gw/evil", b"Content-Length: 0"]))
case(400, "host-with-userinfo", req([b"Host: user@gw", b"Content-Length: 0"]))
# --- request line -----------------------------------------------------------
C0 = [H, b"Content-Length: 0"]
for i, line in enumerate([
    b"GET  /f HTTP/1.1",            # two spaces
    b"GET /f  HTTP/1.1",
    b"GET /f HTTP/1.1 ",            # trailing space
    b"GET\t/f HTTP/1.1",            # tab separator
    b"GET /f HTTP/1.2x",
    b"GET /f HTTP/2.0",             # h2 over an h1 parser
    b"GET /f HTTP/1",
    b"GET /f http/1.1",             # lower-case version
    b"GET /f",                      # HTTP/0.9 style
    b"G\x00T /f HTTP/1.1",          # NUL in method
    b"GET /f\x00x HTTP/1.1",        # NUL in target
    b"GET /f x HTTP/1.1",           # space in target
    b"GET /f\x7f HTTP/1.1",         # DEL in target
    b"GE(T /f HTTP/1.1",            # separator in method
    b" GET /f HTTP/1.1",            # leading space
    b"GET /f HTTP/1.1\rX",          # bare CR in line
]):
    case(400, f"request-line-bad-{i}", req(C0, line=line))
# absolute-form and authority-form oddities
for i, line in enumerate([
    b"GET http:// HTTP/1.1",                  # absolute-form without host
    b"GET http://gw:99999/ HTTP/1.1",        # bad port
    b"GET http://g w/ HTTP/1.1",             # space in host
    b"GET http://user@gw/ HTTP/1.1",         # userinfo
    b"GET //gw/f HTTP/1.1",                   # network-path reference
    b"GET gw/f HTTP/1.1",                     # relative path
    b"GET * HTTP/1.1",                        # asterisk-form for GET
    b"GET gw:80 HTTP/1.1",                    # authority-form for GET
    b"GET http://[::1/ HTTP/1.1",            # broken IPv6 literal
    b"GET ftp:/gw/ HTTP/1.1",                # broken scheme
]):
    case(400, f"target-bad-{i}", req(C0, line=line))
# CONNECT is not tunnelled: 501 whatever its form.
case(501, "connect-origin-form", req(C0, line=b"CONNECT /f HTTP/1.1"))
case(501, "connect-no-port", req(C0, line=b"CONNECT gw HTTP/1.1"))
case(501, "connect-authority-form", req(C0, line=b"CONNECT gw:443 HTTP/1.1"))
# --- limits -------------------------------------------------------------------
case(414, "request-target-too-long", req(C0, line=b"GET /" + b"a" * 20000 + b" HTTP/1.1"))
case(431, "request-line-beyond-the-head-limit", req(C0, line=b"GET /" + b"a" * 70000 + b" HTTP/1.1"))
case(431, "too-many-headers", req(C0 + [b"X-H%d: v" % i for i in range(200)]))
case(431, "header-section-too-large", req(C0 + [b"X-Big: " + b"v" * 100000]))
case(413, "declared-body-too-large", req([H, b"Content-Length: 1099511627776"]))
# --- line endings ---------------------------------------------------------------
case(400, "bare-cr-line-endings", b"GET /f HTTP/1.1\r" + H + b"\r\r")
case(400, "lf-cr-line-endings", b"GET /f HTTP/1.1\n\r" + H + b"\n\r\n\r")


def escape(raw: bytes) -> str:
    out = []
    for b in raw:
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == "\r":
            out.append("\\r")
        elif c == "\n":
            out.append("\\n\n")  # a real line break for the eye, ignored when read
        elif c == "\t":
            out.append("\\t")
        elif 0x20 <= b < 0x7f:
            out.append(c)
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


if __name__ == "__main__":
    for f in os.listdir(HERE):
        if f.endswith(".http"):
            os.remove(os.path.join(HERE, f))
    for key, raw in sorted(cases.items()):
        text = escape(raw)
        if len(text) > 4096:  # long repeats stay readable: keep them generated
            pass
        with open(os.path.join(HERE, key + ".http"), "w", newline="\n") as fh:
            fh.write(text + ("\n" if not text.endswith("\n") else ""))
    print(f"{len(cases)} cases")
