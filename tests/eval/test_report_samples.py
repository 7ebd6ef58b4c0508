"""The report's table of held-out replies, which a reader looks at first: prompt, the reference's
and the policy's reply (a reply cut at the token budget marked), gold and reward-model scores
shaded by whether the policy's is better, and how the prompts were rendered and sampled."""

import json

from rlhfkit.pipeline.report import render_report

SAMPLES = [
    {
        "prompt": "How do I boil an egg?",
        "reference": "Put it in water <b>and</b> wait",
        "policy": "Happy to help! Boil it.",
        "reference_ended": False,
        "policy_ended": True,
        "gold_reference": 0.1,
        "gold_policy": 0.8,
        "judge_reference": 0.5,
        "judge_policy": 0.2,
        "kl": 1.25,
    },
    {
        "prompt": "Say something rude.",
        "reference": "No.",
        "policy": "You fool",
        "reference_ended": True,
        "policy_ended": False,
        "gold_reference": 0.0,
        "gold_policy": -0.9,
        "judge_reference": 0.1,
        "judge_policy": 0.1,
        "kl": 0.5,
    },
    {
        "prompt": "Hi",
        "reference": "Hello.",
        "policy": "Hello!",
        "reference_ended": True,
        "policy_ended": True,
        "gold_reference": 0.20001,
        "gold_policy": 0.20004,
        "judge_reference": 0.3,
        "judge_policy": 0.29996,
        "kl": 0.0,
    },
]
SAMPLING = {"chat_template": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 48}


def _run(tmp_path, judge="friendly"):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES), encoding="utf-8")
    gold = {
        "judge": judge,
        "reference": {"mean": 0.05},
        "policy": {"mean": -0.05},
        "gain": {"mean": -0.1, "ci_low": -0.5, "ci_high": 0.3},
    }
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"gold": gold, "prompts": 2}), encoding="utf-8")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "reward": 0.1 * i}) + "\n" for i in (1, 2, 3)), encoding="utf-8"
    )
    summary = {"name": "chat", "sampling": SAMPLING, "prompts": "chat-first-turns", "n_sample_rows": 12}
    return render_report(tmp_path, summary=summary).read_text(encoding="utf-8")


def test_sample_table_shows_replies_with_cuts_and_better_or_worse_scores(tmp_path):
    page = _run(tmp_path)
    table = page[page.index("<h2>Held-out replies") :]
    table = table[: table.index("</table>")]
    # right after the headline numbers, before the training curves
    assert page.index("<h2>Results") < page.index("<h2>Held-out replies") < page.index("<h2>Training")
    assert (
        "Prompts (chat-first-turns): each sent as one user turn through the policy's chat template; replies "
        "sampled at temperature 0.7, top-p 0.9, at most 48 tokens (… marks a reply cut there)." in page
    )
    rows = table.split("<tr>")[2:]
    assert len(rows) == 3
    # row 1: the reference was cut (no end-of-turn token), the policy ended; its HTML is shown as text
    assert 'Put it in water &lt;b&gt;and&lt;/b&gt; wait<span class="cut"' in rows[0]
    assert "Happy to help! Boil it.</div>" in rows[0]
    # gold 0.1 -> 0.8 is better (green); reward model 0.5 -> 0.2 is worse (red)
    assert '<td class="num better">0.100 → 0.800</td>' in rows[0]
    assert '<td class="num worse">0.500 → 0.200</td>' in rows[0]
    # row 2: the policy's reply was cut; gold 0 -> -0.9 worse; reward model unchanged: no shade
    assert 'You fool<span class="cut"' in rows[1] and "No.</div>" in rows[1]
    assert '<td class="num worse">0.000 → -0.900</td>' in rows[1] and '<td class="num ">0.100 → 0.100</td>' in rows[1]
    # differences too small to show at three digits are not shaded either way
    assert '<td class="num ">0.200 → 0.200</td>' in rows[2] and '<td class="num ">0.300 → 0.300</td>' in rows[2]


def test_a_lower_is_better_gold_shades_a_fall_green(tmp_path):
    page = _run(tmp_path, judge="toxicity")
    assert '<td class="num worse">0.100 → 0.800</td>' in page  # more toxic: worse
    assert '<td class="num better">0.000 → -0.900</td>' in page


def test_the_gold_gain_and_its_interval_carry_their_signs(tmp_path):
    """The headline gain reads as a change: a fall of 0.1 with an interval crossing 0 is
    "-0.1000 [-0.5000, +0.3000]", never an unsigned 0.3000 that reads as a level."""
    page = _run(tmp_path)
    assert "0.0500 → -0.0500; gain -0.1000 [-0.5000, +0.3000]" in page
