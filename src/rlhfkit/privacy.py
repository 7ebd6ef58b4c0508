"""Personal data in feedback text: find it and replace it before it is stored or shared.

Feedback collected from end users (``rlhfkit serve``, ``rlhfkit chat``) holds whatever people
typed: e-mail addresses, phone numbers, card numbers. ``redact_text`` replaces each match by its
kind in brackets (``[EMAIL_ADDRESS]``; the entity names of Microsoft Presidio, so tools that read
Presidio's output read these), and is applied

- when a served conversation is stored (``rlhfkit serve --redact true``, ``rlhfkit chat --redact
  true``): the caller still gets the reply it asked for, the store never holds the original;
- when labels are exported for training (``rlhfkit feedback export --redact true``).

What is found, and how a match is confirmed (a pattern alone flags too many numbers):

==============  ========================================================================
EMAIL_ADDRESS   local@domain.tld (letters of any script)
IBAN_CODE       two letters, two check digits, 11-30 letters / digits (groups of 4 may be
                spaced), and the ISO 13616 check: the number mod 97 is 1; with any lower-case
                letter (de89 3704 ..., De89...) it must also have its country's IBAN length,
                since such runs of letters and digits are mostly identifiers and hashes
CREDIT_CARD     13-19 digits, single spaces or dashes between groups allowed, starting with
                2-6 (the card industries of ISO/IEC 7812), passing the Luhn check, not all
                one digit
US_SSN          ddd-dd-dddd, not area 000, 666 or 900-999, not group 00, not serial 0000
                (the numbers the Social Security Administration never issues)
IP_ADDRESS      IPv4 a.b.c.d with every part <= 255 (not inside a longer dotted run, not
                after "v" / "version": 1.2.3.4.5 and v1.2.3.4 are versions), and IPv6 as
                Python's ``ipaddress`` reads it with at least two written groups and five hex
                digits (``s[::2]``, ``a::b`` and ``::1`` are left alone)
PHONE_NUMBER    international ``+CC ...`` or ``00CC ...`` with 9-15 digits (E.164's
                maximum), North American ``(NXX) NXX-XXXX`` / ``NXX-NXX-XXXX`` /
                ``NXX.NXX.XXXX`` with N in 2-9 (also after a trunk ``1-``), national
                trunk-prefixed numbers (``020 7946 0958``, ``01 23 45 67 89``, ``030/1234567``,
                ``(030) 1234567``), and a 7-digit local ``555-1234`` only when phone, number,
                call, cell, mobile, fax, tel or reach stands in the 40 characters before it
==============  ========================================================================

Text is matched after a length-preserving fold: full-width forms (ＡＢＣ１２３＠) read as their
ASCII letters, no-break and thin spaces as spaces, a Unicode hyphen or dash between digits as ``-``, so
``4111\u00a01111\u00a01111\u00a01111`` (as word processors write it) is found; spans are
positions in the original text.

A match ends where a word does: ``bob@example.com--or`` is an address followed by a dash, while
``123-45-6789-1`` is no SSN.

What is not found: names, street addresses and other identifiers that only a named-entity model
can tell from ordinary words (Presidio runs spaCy for them); a number written without its usual
grouping where it could as well be a count (``5551234567``, a 7-digit local number with no such word before it). Redaction
lowers the risk of keeping personal data; it does not make text anonymous.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["PII_KINDS", "PiiSpan", "count_text", "find_pii", "redact_text", "redact_value", "redact_records"]

# in order of precedence: when two matches overlap, the earlier kind (then the longer match) wins
PII_KINDS = ("EMAIL_ADDRESS", "IBAN_CODE", "CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE_NUMBER")


@dataclass(frozen=True)
class PiiSpan:
    kind: str
    start: int
    end: int
    text: str


# --------------------------------------------------------------------------- checks
def luhn_valid(digits: str) -> bool:
    """The Luhn mod-10 check of a card number (ISO/IEC 7812-1): from the right, double every
    second digit (subtracting 9 when the double exceeds 9); the sum is a multiple of 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers (A=10 .. Z=35);
    the number mod 97 is 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


# IBAN length per country (SWIFT's IBAN registry); asked of IBANs with lower-case letters only
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SC": 31,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
}


def _iban_ok(s: str) -> bool:
    if not iban_valid(s):
        return False
    compact = s.replace(" ", "")
    if compact == compact.upper():  # written as IBANs are
        return True
    compact = compact.upper()
    return IBAN_LENGTHS.get(compact[:2]) == len(compact)


def ssn_valid(ssn: str) -> bool:
    area, group, serial = ssn.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _ipv4_valid(s: str) -> bool:
    return all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in s.split("."))


def _ipv6_valid(s: str) -> bool:
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- patterns
# The end of a match: not followed by more of a word, nor by a hyphen that goes on with one
# ("bob@example.com--or call" ends at the address; "123-45-6789-1" is not an SSN).
_END = r"(?!\w|-\w)"
_EMAIL = re.compile(r"(?<![\w.%+'-])[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}" + _END)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}" + _END)
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bversion\s*|\brelease\s*)$", re.IGNORECASE)
# +CC or 00CC, then groups (an area code may stand in parentheses)
_PHONE_INTL = re.compile(r"(?<![\w+.])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,5}\)|\d{1,5})){2,6}" + _END)
# NANP, optionally after the trunk 1 (1-800-555-0199)
_PHONE_NANP = re.compile(r"(?<![\w-])(?:1[-. ])?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}" + _END)
# national numbers with a trunk 0: grouped (020 7946 0958, 01 23 45 67 89) or with the area code
# set apart by a slash or parentheses (030/1234567, (030) 1234567)
_PHONE_TRUNK = re.compile(
    r"(?<![\w-])(?:0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}|0\d(?: \d\d){4}"
    r"|0\d{2,4}/ ?\d{4,8}|\(0\d{2,4}\) ?\d{3,8})" + _END
)
# a 7-digit local number (555-1234) is a phone number only where the words before it say so
_PHONE_LOCAL = re.compile(r"(?<![\w-])\d{3}-\d{4}" + _END)
_PHONE_CONTEXT = re.compile(r"\b(?:phone|telephone|tel|number|call|cell|mobile|fax|reach)\b", re.IGNORECASE)


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


# the first digit of a card number is its industry: 2 and 5 Mastercard, 3 Amex / Diners / JCB,
# 4 Visa, 6 Discover / UnionPay / Maestro (ISO/IEC 7812); a Luhn-valid run of digits starting
# otherwise (a millisecond timestamp 1700000000004) is not taken for one
_CARD_FIRST_DIGITS = "23456"


def _card_ok(s: str) -> bool:
    d = _digits(s)
    seps = set(re.findall(r"[ -]", s))
    return 13 <= len(d) <= 19 and len(seps) <= 1 and len(set(d)) > 1 and d[0] in _CARD_FIRST_DIGITS and luhn_valid(d)


def _ipv6_ok(s: str) -> bool:
    # at least two written groups and five hex digits: "::", "::2" and "a::b" are Python slices,
    # Haskell types and C++ scopes far more often than addresses (fe80::1 has five)
    groups = [g for g in s.split(":") if g]
    return len(groups) >= 2 and sum(map(len, groups)) >= 5 and _ipv6_valid(s)


def _phone_nanp_ok(s: str) -> bool:
    d = _digits(s)  # NXX NXX XXXX: area code and exchange do not start with 0 or 1
    return len(d) == 10 and d[0] not in "01" and d[3] not in "01"


_DETECTORS = {
    "EMAIL_ADDRESS": [(_EMAIL, None)],
    "IBAN_CODE": [(_IBAN, _iban_ok)],
    "CREDIT_CARD": [(_CARD, _card_ok)],
    "US_SSN": [(_SSN, ssn_valid)],
    "IP_ADDRESS": [(_IPV4, "ipv4"), (_IPV6, _ipv6_ok)],
    "PHONE_NUMBER": [
        (_PHONE_INTL, lambda s: 9 <= len(_digits(s).removeprefix("00")) <= 15),
        (_PHONE_NANP, lambda s: _phone_nanp_ok(re.sub(r"^1[-. ]", "", s))),
        (_PHONE_TRUNK, lambda s: 10 <= len(_digits(s)) <= 11),
        (_PHONE_LOCAL, "context"),
    ],
}
CONTEXT_CHARS = 40  # how far before a local number its context word may stand

# One character for one: full-width ASCII (U+FF01-FF5E) to ASCII, no-break / figure / thin /
# narrow no-break spaces to a space, and a Unicode hyphen, dash or minus sign between two digits
# to "-" (only there: beside a letter a dash is the sentence's, "SSN\u2013123-45-6789", and read
# as "-" it would make the match look like part of a longer hyphenated word). Matching runs on the
# folded text, so every position is also a position in the original.
_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FOLD.update({c: 0x20 for c in (0x00A0, 0x2002, 0x2003, 0x2007, 0x2009, 0x200A, 0x202F, 0x3000)})
_DIGIT_DASH = re.compile(r"(?<=\d)[\u2010\u2011\u2012\u2013\u2212\ufe63](?=\d)")


def _folded(text: str) -> str:
    return _DIGIT_DASH.sub("-", text.translate(_FOLD))


def find_pii(text: str, kinds: tuple[str, ...] = PII_KINDS) -> list[PiiSpan]:
    """Non-overlapping spans of personal data in ``text``, in order of position."""
    unknown = [k for k in kinds if k not in _DETECTORS]
    if unknown:
        raise ValueError(f"unknown PII kinds {unknown}; known: {', '.join(PII_KINDS)}")
    original, text = text, _folded(text)
    found = []
    for rank, kind in enumerate(k for k in PII_KINDS if k in kinds):
        for pattern, check in _DETECTORS[kind]:
            for m in pattern.finditer(text):
                s = m.group(0).rstrip(" .-")  # a trailing separator belongs to the sentence
                if check == "context":
                    ok = bool(_PHONE_CONTEXT.search(text, max(0, m.start() - CONTEXT_CHARS), m.start()))
                elif check == "ipv4":  # v1.2.3.4 and "version 1.2.3.4" are versions
                    ok = _ipv4_valid(s) and not _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start())
                else:
                    ok = check is None or check(s)
                if s and ok:
                    end = m.start() + len(s)
                    found.append((rank, -len(s), m.start(), PiiSpan(kind, m.start(), end, original[m.start() : end])))
    kept: list[PiiSpan] = []
    taken = bytearray(len(text))  # characters already in a kept span (linear, however dense the hits)
    for _, _, _, span in sorted(found, key=lambda x: x[:3]):  # precedence, then longest first
        if not any(taken[span.start : span.end]):
            kept.append(span)
            taken[span.start : span.end] = b"\x01" * (span.end - span.start)
    return sorted(kept, key=lambda s: s.start)


def redact_text(text: str, kinds: tuple[str, ...] = PII_KINDS) -> tuple[str, Counter]:
    """``text`` with every span of ``find_pii`` replaced by ``[KIND]``, and the count per kind."""
    spans = find_pii(text, kinds)
    if not spans:
        return text, Counter()
    parts, at = [], 0
    for s in spans:
        parts.append(text[at : s.start])
        parts.append(f"[{s.kind}]")
        at = s.end
    parts.append(text[at:])
    return "".join(parts), Counter(s.kind for s in spans)


# the fields of rlhfkit.data records (and stored conversations) that name things, not hold text
_NOT_TEXT = frozenset({"role", "subset", "kind", "model", "name", "id", "flags"})


def redact_value(value: Any, counts: Counter | None = None, kinds: tuple[str, ...] = PII_KINDS) -> Any:
    """Redact every string in a JSON-like value (dicts, lists, strings) except the values of
    naming keys (``role``, ``subset``, ``model`` ...); ``counts`` (if given) is updated."""
    counts = Counter() if counts is None else counts
    if isinstance(value, str):
        out, c = redact_text(value, kinds)
        counts.update(c)
        return out
    if isinstance(value, dict):
        return {k: (v if k in _NOT_TEXT else redact_value(v, counts, kinds)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, counts, kinds) for v in value)
    return value


def count_text(counts: dict) -> str:
    """What redaction replaced, for a person: ``"1 CREDIT_CARD, 3 EMAIL_ADDRESS"`` ("" for none)."""
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def redact_records(records: list, kinds: tuple[str, ...] = PII_KINDS) -> tuple[list, Counter]:
    """``rlhfkit.data`` records (dataclasses) with their text fields redacted, and the counts."""
    counts: Counter = Counter()
    out = []
    for rec in records:
        changes = {
            f.name: redact_value(getattr(rec, f.name), counts, kinds)
            for f in dataclasses.fields(rec)
            if f.name not in _NOT_TEXT
        }
        out.append(dataclasses.replace(rec, **changes))
    return out, counts
