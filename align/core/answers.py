"""Which option letter(s) a generated answer chooses — the one extractor (layer 0, stdlib only).

The MCQ evaluator (``eval.mcq``) and the RL reward (``rm.rules.mcq_match``) both read answers
with :func:`extract_choice`, so a policy is rewarded by the same reading it is judged by.

Choices are the **upper-case** letters in ``letters`` (``"ABCD"`` by default, ``"ABCDE"`` for
five options, ...). Lower-case letters never count: ``"The answer is a bit tricky"`` names no
option, and ``"answer: b"`` gives None (a reader that returned ``'b'`` would neither match the
key nor count as "no answer"). A letter inside a Latin word never counts either (``CPA``,
``because``, ``Absolutely``); ``ABC公司`` is a run of option letters, i.e. several letters.

Reading, step by step:

1. **Normalise**: full-width ASCII becomes ASCII (``Ｂ`` → ``B``, ``（Ｄ）`` → ``(D)``,
   ``：`` → ``:``, ``，`` → ``,``; the ideographic space → a space). ``【】``, ``、`` and ``。``
   stay as they are and are matched as such.
2. **Cut a runaway**: a base model prompted with ``...答案是：`` often answers and then invents
   the next question (``"B\\n\\n题目：甲公司应选A方案还是"``). The text is cut at the first
   *line* that starts a new question: ``题目:``, ``问题:``, ``Question:`` (optionally numbered)
   or an exam header ``以下是…选择题``. So the answer before the runaway wins, never a letter
   from the invented question. (A run-on question without such a line — C-Eval's bare
   ``{question}\\nA. …`` layout — is not detected; our prompts always use ``题目：``.)
3. **Letter groups**: where a choice may stand, a *group* is read: one or more option letters,
   adjacent (``AC``) or joined by ``、 , / & +``, ``和 与 及 以及``, ``and`` (``A、C``,
   ``A and C``). A group joined by ``或 / 或者 / 还是 / or`` (``A或B``) is undecided: it chooses
   nothing. Groups are matched atomically, so ``A、B、C、D都不对`` is the whole list, never a
   prefix of it.
4. **Tiers**, the first tier that finds anything decides (even when what it finds is an
   undecided group):

   a. *Declarations* — an explicit statement of the answer; the **last** one wins, so a
      self-correction counts (``"答案是A，不对，答案应该是C"`` → ``C``):
      ``答案[选项] [应该|应当|应|可能|就|只能|肯定|一定] [是|为|选|选择] [:] [选项] X``
      (``答案是X``, ``答案为X``, ``答案应该是X``, ``【答案】X``, ``本题答案选X``),
      ``正确[的](选项|答案) [是|为] X``, ``[故|所以|因此|因而|于是|应|应该|应当|只能|我|本题]
      选[择] X`` (not after ``不 / 不应 / 不应该 / 不能 / 不可 / 不该``), ``【X】``, and in English
      ``answer[s] [is|was|would be|should be|must be|will be] [:] [option] X``, ``choice is X``,
      ``I [would|will|'d|'ll] (choose|chose|pick|select|go with|go for) [option] X``.
      X may be bracketed: ``(X)``, ``[X]``, ``【X】``, quoted or ``**X**``.
   b. *Leading answer* — the text starts with a group that is bracketed (``(C)``, ``（Ｄ）``,
      ``(AC)``) or followed by the end, a line break, punctuation, or spaces and then no Latin
      letter (``C``, ``C.``, ``C\\n解析：略``, ``B. 因为A选项的说法不完整``, ``C 因为…``,
      ``A、C``). ``A和C都有道理`` is no leading answer (the group runs on into a word), nor is
      ``B is not correct, …`` (an English sentence about B). Skipped for an option-by-option
      walk: when the first line is an option line (``A. 错误``) and another line starts with a
      different option (``B. 正确``), the first letter is a label, not an answer.
   c. *Verdicts* — an option declared right; the last one wins: ``X[选项|项][的说法][是|为]
      [都|均](正确|当选|符合题意)`` (``D项正确``, ``B项当选``, ``选项B正确``, ``A不正确，…，C正确``
      → ``C``; ``不正确`` is no verdict) and ``X (is|are) [the] (correct|right|true|best)``
      (``I think B is correct``).
   d. *The only letter mentioned* — a single option letter standing alone anywhere
      (``"分析：该做法符合规定，B"``, ``"The answer is because of liquidity: D"``). Two or more
      distinct letters: None.

Declarations outrank the leading letter because a chat model that starts with a label and then
concludes (``"A. 分析…… 故选C"``) means its conclusion; the leading letter outranks verdicts
because a base model's first letter is its answer and what follows may discuss other options.

Multi-letter answers are explicit: :func:`extract_choices` returns the sorted set of letters a
group names (``"答案：CA"`` → ``"AC"``), :func:`extract_choice` with ``multi=False`` (the
default, single-answer questions) returns one letter or None — an answer naming several letters
is ambiguous and chooses nothing — and with ``multi=True`` the same sorted set as
:func:`extract_choices`. Hence ``extract_choice(t) == (r if r and len(r) == 1 else None)`` with
``r = extract_choices(t)``, and a single-answer key is matched identically either way.

Inspired by the rule lists of FinanceIQ's and C-Eval's own extractors (ordered explicit
phrases, then weaker ones, then "the only letter mentioned"); unlike FinanceIQ, nothing is
guessed at random when no letter is found.

Known limits: negation is understood only in ``不选 / 不应选 …`` and ``不正确``; a text whose
only letter is negated (``"答案不是A"``, ``"不应选A"``) still falls to tier d and reads ``A``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_LETTERS = "ABCD"

# Full-width ASCII (U+FF01..U+FF5E) to ASCII, the ideographic space to a space.
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FULL_WIDTH[0x3000] = 0x20

_RUNAWAY = re.compile(
    r"\n[ \t]*(?:\d+\s*[.、)]\s*)?"
    r"(?:(?:题目|问题|(?i:question)\s*\d*)\s*:|以下是[^\n]{0,40}?(?:选择题|试题))"
)
_ALTERNATIVE = re.compile(r"或|还是|(?<![A-Za-z])(?i:or)(?![A-Za-z])")


@dataclass(frozen=True)
class _Patterns:
    """The compiled patterns for one set of option letters (see the module docstring)."""

    letters: str
    declarations: tuple[re.Pattern, ...]
    verdicts: tuple[re.Pattern, ...]
    leading: re.Pattern
    option_line: re.Pattern
    lone: re.Pattern


def normalise(text: str) -> str:
    """``text`` with full-width ASCII as ASCII (``"答案是Ｃ（Ｄ）"`` → ``"答案是C(D)"``)."""
    return text.translate(_FULL_WIDTH)


def cut_runaway(text: str) -> str:
    """``text`` up to the first line that starts an invented next question (``题目:`` ...).

    Expects normalised text (``题目：`` already ``题目:``).
    """
    match = _RUNAWAY.search(text)
    return text[: match.start()] if match else text


def _check_letters(letters: str) -> None:
    ok = (
        isinstance(letters, str)
        and letters != ""
        and all("A" <= c <= "Z" for c in letters)
        and len(set(letters)) == len(letters)
    )
    if not ok:
        raise ValueError(f"letters: expected distinct upper-case letters A-Z, got {letters!r}")


@lru_cache(maxsize=16)
def _patterns(letters: str) -> _Patterns:
    _check_letters(letters)
    cls = "[" + letters + "]"
    # Possessive quantifiers (``*+``) and an atomic group keep every pattern linear: no
    # backtracking into runs of spaces, brackets or letters (``"(((("`` * 3000 takes ms).
    _ = r"\s*+"
    token = rf"(?<![A-Za-z]){cls}++(?![A-Za-z])"
    sep = _ + r"(?:[、,/&+]|以及|和|与|及|或者|或是|或|还是|(?i:and|or)(?![A-Za-z]))" + _
    group = rf"(?P<g>(?>{token}(?:{sep}{token})*+))"
    open_ = r"(?:[(\[【\"“‘'*]" + _ + ")*+"
    declarations = (
        rf"答案(?:选项)?{_}】?{_}(?:应该|应当|应|可能|就|只能|肯定|一定)?{_}"
        rf"(?:是|为|选择|选)?{_}:?{_}(?:选项)?{_}{open_}{group}",
        rf"正确的?(?:选项|答案){_}(?:应该|应)?{_}(?:是|为)?{_}:?{_}{open_}{group}",
        r"(?<!不)(?<!不应)(?<!不应该)(?<!不能)(?<!不可)(?<!不该)"
        rf"(?:故|所以|因此|因而|于是|应该|应当|应|只能|我|本题)?选(?:择)?{_}:?{_}(?:选项)?{_}"
        rf"{open_}{group}",
        rf"【{_}{group}{_}】",
        rf"(?<![A-Za-z])(?i:answer|choice)s?{_}"
        r"(?:(?i:is|was|would\s++be|should\s++be|must\s++be|will\s++be)(?![A-Za-z])"
        rf"{_})?:?{_}(?:(?i:option|choice){_})?{open_}{group}",
        r"(?<![A-Za-z])(?i:i(?:\s++would|\s++will|'d|'ll)?\s++"
        r"(?:choose|chose|pick|select|go\s++with|go\s++for))\s++"
        rf"(?:(?i:option|choice){_})?{open_}{group}",
    )
    verdicts = (
        rf"{group}(?:{_}[)\]】])?{_}(?:选项|项)?{_}(?:的?说法)?{_}(?:是|为)?{_}(?:都|均)?{_}"
        r"(?:正确|当选|符合题意)",
        rf"{group}(?:{_}[)\]])?\s++(?i:is|are)\s++(?:(?i:the)\s++)?"
        r"(?i:correct|right|true|best)(?![A-Za-z])",
    )
    after = r"(?=\s*$|[ \t]*\n|[.。,、:;!?*]|[ \t]+[^A-Za-z\s])"  # not "B is not ..."
    leading = rf"^[\s*_#>]*+{open_}{group}(?:{_}[)\]】]|{after})"
    return _Patterns(
        letters,
        tuple(re.compile(p) for p in declarations),
        tuple(re.compile(p) for p in verdicts),
        re.compile(leading),
        re.compile(rf"^[ \t*_#>]*({cls})[ \t]*[.、:)]", re.MULTILINE),
        re.compile(rf"(?<![A-Za-z]){cls}(?![A-Za-z])"),
    )


def _read_group(group: str, letters: str) -> str | None:
    """The sorted distinct letters of a matched group; None for an alternative (``A或B``)."""
    if _ALTERNATIVE.search(group):
        return None
    return "".join(sorted({c for c in group if c in letters}))


def _last(patterns: tuple[re.Pattern, ...], text: str) -> re.Match | None:
    """The match whose group starts last, over all ``patterns``."""
    best = None
    for pattern in patterns:
        for match in pattern.finditer(text):
            if best is None or match.start("g") > best.start("g"):
                best = match
    return best


def _is_option_walk(text: str, p: _Patterns) -> bool:
    """True when the text starts with an option line and another option line follows."""
    starts = [(m.start(), m.group(1)) for m in p.option_line.finditer(text)]
    first_line_end = text.find("\n", len(text) - len(text.lstrip()))
    first_line_end = len(text) if first_line_end < 0 else first_line_end
    if not starts or starts[0][0] > first_line_end:
        return False
    return len({letter for _, letter in starts}) >= 2


def extract_choices(text: str, letters: str = DEFAULT_LETTERS) -> str | None:
    """All option letters ``text`` chooses, sorted (``"答案：CA"`` → ``"AC"``), or None.

    ``letters``: the option letters, distinct upper-case (``"ABCD"``; ``"ABCDE"`` for five
    options); anything else raises ValueError. See the module docstring for the tiers. None when
    the text names no option, or the deciding phrase leaves it open (``"答案是A或B"``).
    """
    p = _patterns(letters)
    if not text:
        return None
    text = cut_runaway(normalise(text))
    found = _last(p.declarations, text)
    if found is None and not _is_option_walk(text, p):
        found = p.leading.match(text)
    if found is None:
        found = _last(p.verdicts, text)
    if found is not None:
        return _read_group(found.group("g"), letters) or None
    mentioned = set(p.lone.findall(text))
    return mentioned.pop() if len(mentioned) == 1 else None


def extract_choice(text: str, letters: str = DEFAULT_LETTERS, multi: bool = False) -> str | None:
    """The option letter ``text`` chooses (``"故选C"`` → ``"C"``), or None.

    ``multi=False`` (single-answer questions): one letter, or None when the text chooses none
    or several (``"答案：AC"`` is ambiguous for a single-answer question and chooses nothing).
    ``multi=True`` (multi-answer keys): the sorted letters, as :func:`extract_choices`
    (``"答案：A、C"`` → ``"AC"``, ``"故选B"`` → ``"B"``). ``letters`` as in
    :func:`extract_choices`.

    >>> extract_choice("B\\n\\n题目：甲公司应选A方案还是")
    'B'
    >>> extract_choice("The answer is a bit tricky, but I choose C.")
    'C'
    >>> extract_choice("答案是A、C"), extract_choice("答案是A、C", multi=True)
    (None, 'AC')
    """
    got = extract_choices(text, letters)
    if multi or got is None:
        return got
    return got if len(got) == 1 else None


def normalise_key(key: object, letters: str = DEFAULT_LETTERS) -> str:
    """An answer key as sorted distinct letters (``"CA"``, ``"A, C"``, ``"ｃａ"`` → ``"AC"``).

    Case, full width, spaces and the separators ``、 , ; / +`` are ignored. Raises ValueError
    naming the key when it holds anything else, or no letter.
    """
    _check_letters(letters)
    raw = normalise(str(key)).upper()
    body = re.sub(r"[\s、,;/+]", "", raw)
    if not body or any(c not in letters for c in body):
        raise ValueError(f"answer key {key!r}: expected option letters from {letters!r}")
    return "".join(sorted(set(body)))
