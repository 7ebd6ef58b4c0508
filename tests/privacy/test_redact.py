"""The PII redactor: each kind found and confirmed by its check, ordinary numbers left alone,
overlaps resolved, records and nested values redacted, and on real data every hit is what it
says (the precision check in docs/BENCHMARKS.md, kept here as counts)."""

import gzip
import json
from collections import Counter

import pytest

from rlhfkit.data import ConversationRecord, PreferencePair, RatingRecord
from rlhfkit.privacy import find_pii, iban_valid, luhn_valid, redact_records, redact_text, redact_value, ssn_valid


def kinds(text):
    return [(s.kind, s.text) for s in find_pii(text)]


def test_luhn_by_hand():
    # 79927398713: the textbook example; from the right 3,1*2=2,7,8*2=16->7,9,3*2=6,7,2*2=4,9,9*2=18->9,7
    # sum = 3+2+7+7+9+6+7+4+9+9+7 = 70, a multiple of 10
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_iban_check_digits():
    assert iban_valid("GB82WEST12345698765432")  # the ISO 13616 example
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("GB83WEST12345698765432")  # one check digit off
    assert not iban_valid("GB82WEST1234569876543!")


def test_ssn_rules():
    assert ssn_valid("123-45-6789")
    for never_issued in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000"):
        assert not ssn_valid(never_issued)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to jane.doe+rlhf@mail.example.co.uk today", [("EMAIL_ADDRESS", "jane.doe+rlhf@mail.example.co.uk")]),
        ("card 4111 1111 1111 1111 expires", [("CREDIT_CARD", "4111 1111 1111 1111")]),
        ("card 4111-1111-1111-1111.", [("CREDIT_CARD", "4111-1111-1111-1111")]),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", [("IBAN_CODE", "GB82 WEST 1234 5698 7654 32")]),
        ("my SSN is 123-45-6789", [("US_SSN", "123-45-6789")]),
        ("host 192.168.10.1 is down", [("IP_ADDRESS", "192.168.10.1")]),
        (
            "v6 2001:db8::8a2e:370:7334 and fe80::1",
            [("IP_ADDRESS", "2001:db8::8a2e:370:7334"), ("IP_ADDRESS", "fe80::1")],
        ),
        ("call (415) 555-2671 now", [("PHONE_NUMBER", "(415) 555-2671")]),
        (
            "call 415.555.2671 or +44 20 7946 0958",
            [("PHONE_NUMBER", "415.555.2671"), ("PHONE_NUMBER", "+44 20 7946 0958")],
        ),
        ("London 020 7946 0958.", [("PHONE_NUMBER", "020 7946 0958")]),
        ("his phone number is 555-1234.", [("PHONE_NUMBER", "555-1234")]),
        (
            "0049 30 1234567 or 0033 1 23 45 67 89",
            [("PHONE_NUMBER", "0049 30 1234567"), ("PHONE_NUMBER", "0033 1 23 45 67 89")],
        ),
        (
            "Paris 01 23 45 67 89, Berlin 030/1234567 or (030) 1234567",
            [("PHONE_NUMBER", "01 23 45 67 89"), ("PHONE_NUMBER", "030/1234567"), ("PHONE_NUMBER", "(030) 1234567")],
        ),
        ("toll-free 1-800-555-0199", [("PHONE_NUMBER", "1-800-555-0199")]),
        # a closing bracket after the number belongs to the sentence
        (
            "(jane@corp.com, +44 20 7946 0958)",
            [("EMAIL_ADDRESS", "jane@corp.com"), ("PHONE_NUMBER", "+44 20 7946 0958")],
        ),
        ("call +1 (202) 456-1111 now", [("PHONE_NUMBER", "+1 (202) 456-1111")]),
        (
            "jörg@bücher.de and o'brien@example.com",
            [("EMAIL_ADDRESS", "jörg@bücher.de"), ("EMAIL_ADDRESS", "o'brien@example.com")],
        ),
        # a dash after the match is the sentence's, not a longer token's
        ("write to bob@example.com--or call", [("EMAIL_ADDRESS", "bob@example.com")]),
        ("SSN: 123-45-6789-", [("US_SSN", "123-45-6789")]),
        # as word processors and phones write them: no-break / narrow spaces, Unicode hyphens,
        # full-width forms; the span is the original text
        ("card 4111\u00a01111\u00a01111\u00a01111 ok", [("CREDIT_CARD", "4111\u00a01111\u00a01111\u00a01111")]),
        ("tel +44\u202f20\u202f7946\u202f0958.", [("PHONE_NUMBER", "+44\u202f20\u202f7946\u202f0958")]),
        ("SSN 123\u201145\u20116789", [("US_SSN", "123\u201145\u20116789")]),
        (
            "mail \uff4a\uff41\uff4e\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d now",
            [
                (
                    "EMAIL_ADDRESS",
                    "\uff4a\uff41\uff4e\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
                )
            ],
        ),
        # a dash beside a letter is the sentence's, even a Unicode one (it is not folded to "-")
        ("SSN\u2013123-45-6789", [("US_SSN", "123-45-6789")]),
        ("my number\u2013415-555-2671", [("PHONE_NUMBER", "415-555-2671")]),
        ("write bob@example.com\u2013I check it daily", [("EMAIL_ADDRESS", "bob@example.com")]),
        ("ssn 123-45-6789\u2011ok", [("US_SSN", "123-45-6789")]),
        # an IBAN in lower case, with its country's length (DE: 22)
        ("iban de89 3704 0044 0532 0130 00 thanks", [("IBAN_CODE", "de89 3704 0044 0532 0130 00")]),
    ],
)
def test_finds_each_kind(text, expected):
    assert kinds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "In 1999 about 12,000,000 people watched; the date was 2023-10-05 and pi is 3.14159.",
        "card 4111 1111 1111 1112 fails Luhn",  # one digit off
        "0000 0000 0000 0000 is all one digit",  # passes Luhn, but is no card
        "SSN 666-12-3456 is never issued",
        "version 1.2.3.4.5 and 300.1.1.1",  # a dotted run, an octet above 255
        "at 12:30:45 the clock struck",  # not IPv6
        "(123) 456-7890 has an area code starting with 1",
        "the score was 555-1234 in the end",  # a local number with no phone word before it
        "ISBN 978-3-16-148410-0 and ticket GB12 ABCD",
        "reverse with s[::-1], every other a[::2], f :: Int -> Int, C++ a::b, loopback ::1",  # not IPv6
        "version 1.2.3.4 and v1.2.3.4 are versions",
        "the constant is 0.0072973525693 with some error",  # 00 inside a decimal is no international prefix
        '{"ts": 1700000000004}',  # Luhn-valid, but no card starts with 1
        "123-45-6789-1 goes on",
        # lower-case runs that pass mod 97 but are no IBAN: no IBAN country "ab"; DE has 22 characters, not 20
        "token ab40c0ffee000000000040 and id de23c0ffee0000000023",
        "mixed-case id AB40c0ffee000000000040",
    ],
)
def test_leaves_ordinary_numbers(text):
    assert find_pii(text) == []


def test_overlap_goes_to_the_earlier_kind():
    # an IBAN's digits would also pass as a run of card digits in part; the IBAN wins and nothing
    # else is reported inside it
    text = "pay DE89 3704 0044 0532 0130 00 now"
    assert kinds(text) == [("IBAN_CODE", "DE89 3704 0044 0532 0130 00")]
    # an e-mail whose local part is a phone-like number stays one e-mail
    assert kinds("415-555-2671@example.com") == [("EMAIL_ADDRESS", "415-555-2671@example.com")]


def test_dense_text_is_linear():
    """Choosing among overlapping hits marks taken characters (linear), not pairs of spans: a
    200k-character text of 28,571 addresses takes well under a second (quadratic: a minute)."""
    import time

    text = "a@b.cc " * 28_571
    t0 = time.perf_counter()
    assert len(find_pii(text)) == 28_571
    assert time.perf_counter() - t0 < 5


def test_redact_text_and_counts():
    out, counts = redact_text("Mail a@b.org or b@c.org, call +1 917-444-6321.")
    assert out == "Mail [EMAIL_ADDRESS] or [EMAIL_ADDRESS], call [PHONE_NUMBER]."
    assert counts == Counter({"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1})
    assert redact_text("nothing here") == ("nothing here", Counter())
    with pytest.raises(ValueError, match="unknown PII kinds"):
        find_pii("x", kinds=("NAME",))


def test_redact_value_keeps_names():
    counts = Counter()
    v = redact_value(
        {"messages": [{"role": "user", "content": "I am x@y.com"}], "model": "a@b.com-model", "n": 3}, counts
    )
    assert v == {"messages": [{"role": "user", "content": "I am [EMAIL_ADDRESS]"}], "model": "a@b.com-model", "n": 3}
    assert counts == Counter({"EMAIL_ADDRESS": 1})


def test_redact_records():
    recs = [
        PreferencePair("my email is a@b.com", "ok, a@b.com", "no", subset="p@q.com-project"),
        ConversationRecord(
            [{"role": "user", "content": "call (212) 555-0199"}, {"role": "assistant", "content": "sure"}]
        ),
        RatingRecord("ssn 123-45-6789?", "no", 2.0, 1.0, 7.0, []),
    ]
    out, counts = redact_records(recs)
    assert out[0] == PreferencePair(
        "my email is [EMAIL_ADDRESS]", "ok, [EMAIL_ADDRESS]", "no", subset="p@q.com-project"
    )
    assert out[1].messages[0] == {"role": "user", "content": "call [PHONE_NUMBER]"}
    assert out[2].prompt == "ssn [US_SSN]?" and out[2].rating == 2.0
    assert counts == Counter({"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1, "US_SSN": 1})
    assert recs[0].prompt == "my email is a@b.com"  # the input records are not changed


@pytest.mark.shared_data
def test_real_dialogues_every_hit_is_personal_data(shared_data):
    """HH-RLHF harmless test (4,624 dialogues, 3.1M characters): people asked the assistant for
    phone numbers, e-mail addresses and a social security number; each of the 41 hits was read
    by hand (benchmarks/pii_scan.py prints them; docs/BENCHMARKS.md) and is one of those. The counts pin that list."""
    rows = [json.loads(line) for line in gzip.open(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", "rt")]
    counts = Counter()
    for r in rows:
        for text in (r["chosen"], r["rejected"]):
            counts.update(s.kind for s in find_pii(text))
    assert counts == Counter({"PHONE_NUMBER": 27, "EMAIL_ADDRESS": 13, "US_SSN": 1})


@pytest.mark.shared_data
def test_real_reviews_hold_one_phone_number(shared_data):
    """7.8M characters of movie reviews, full of years, scores and running times: one hit, a
    distributor's number after "tel :" (only its local part: the area code stands apart)."""
    import zipfile

    with zipfile.ZipFile(shared_data / "movie_reviews.zip") as z:
        hits = [
            s
            for name in z.namelist()
            if name.endswith(".txt")
            for s in find_pii(z.read(name).decode("utf-8", "replace"))
        ]
    assert [(s.kind, s.text) for s in hits] == [("PHONE_NUMBER", "449-3411")]
