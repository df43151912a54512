"""A deterministic generator of small Chinese financial tasks with verifiable answers.

Six sub-domains mirror the XuanYuan reports. Every item has a reference (chosen) answer that is
either computed (金融计算, parts of 理财规划), taken from a glossary written here (金融百科, 保险,
客服对话), or fixed by an explicit rule (合规与风险管理: a risk disclosure and no promise of
returns), and a rejected answer that breaks the fact or the rule. The same facts drive the
rule-based reward in :mod:`align.tiny.reward`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

CALC, COMPLIANCE, GLOSSARY, PLANNING, INSURANCE, SERVICE = (
    "金融计算",
    "合规与风险管理",
    "金融百科",
    "理财规划",
    "保险",
    "客服对话",
)
CATEGORIES = (CALC, COMPLIANCE, GLOSSARY, PLANNING, INSURANCE, SERVICE)

RISK_DISCLOSURE = "风险提示：投资有风险，入市需谨慎。"
SERVICE_CLOSING = "感谢您的咨询！"
# Promises a compliant answer never makes; every rejected compliance answer contains one.
FORBIDDEN_PROMISES = (
    "稳赚不赔",
    "保证每年",
    "可以承诺保本",
    "绝对没有风险",
    "放心购买",
    "马上帮您买入",
    "一定能达到",
)

# The shape a well-formed answer takes in each sub-domain (matched against the stripped text).
ANSWER_SHAPES: dict[str, re.Pattern] = {
    CALC: re.compile(r".+答案：-?\d+(\.\d+)?(元|%|年)。"),
    COMPLIANCE: re.compile(r".+" + re.escape(RISK_DISCLOSURE)),
    GLOSSARY: re.compile(r"[^，。]{1,12}是指.+。"),
    PLANNING: re.compile(r"建议.+。"),
    INSURANCE: re.compile(r"[^，。]{1,12}(主要保障|是指).+。"),
    SERVICE: re.compile(r"您好，.+。" + re.escape(SERVICE_CLOSING)),
}

GLOSSARY_TERMS = {
    "市盈率": "股票价格与每股收益的比率",
    "市净率": "股票价格与每股净资产的比率",
    "净资产收益率": "净利润与平均股东权益的比率",
    "资产负债率": "负债总额与资产总额的比率",
    "流动比率": "流动资产与流动负债的比率",
    "毛利率": "毛利润占营业收入的比例",
    "通货膨胀": "一般物价水平持续上涨、货币购买力下降的现象",
    "存款准备金率": "商业银行按规定存放在中央银行的存款占其存款总额的比例",
    "基准利率": "金融市场上作为其他利率定价参照的利率",
    "国债": "国家以其信用为基础发行的债券",
    "可转换债券": "持有人可以在约定条件下转换为发行公司股票的债券",
    "开放式基金": "份额不固定、投资者可以随时申购或赎回的基金",
    "封闭式基金": "份额在存续期内固定、不能随时赎回的基金",
    "指数基金": "以跟踪某一指数表现为目标的基金",
    "货币基金": "主要投资于短期货币市场工具的基金",
    "基金净值": "基金每份额所对应的资产价值",
    "分红": "公司将部分利润按持股比例分配给股东",
    "除权除息": "分红送股后对股票价格进行相应调整",
    "融资融券": "投资者向证券公司借入资金买入证券或借入证券卖出",
    "涨跌停板": "交易所规定的单日价格最大涨跌幅度",
    "做空": "先借入证券卖出、再在低价买回归还以获利的交易方式",
    "期货": "约定在未来某一时间按约定价格交割标的物的标准化合约",
    "期权": "赋予持有人在约定时间以约定价格买入或卖出标的资产权利的合约",
    "保证金": "交易者为履行合约而缴纳的一定比例的资金",
    "汇率": "一种货币兑换另一种货币的比率",
    "信用评级": "评级机构对债务人偿债能力和意愿的评价",
    "久期": "债券现金流的加权平均到期时间",
    "复利": "利息计入本金后继续产生利息的计息方式",
    "年化收益率": "把一段时间的收益率折算为一年的收益率",
    "流动性": "资产以合理价格迅速变现的能力",
}

INSURANCE_COVERAGE = {
    "重疾险": "被保险人确诊合同约定的重大疾病后一次性给付保险金",
    "医疗险": "被保险人因疾病或意外产生的医疗费用报销",
    "意外险": "被保险人因意外事故导致的身故、伤残或医疗费用",
    "定期寿险": "被保险人在保险期间内身故或全残时给付保险金",
    "终身寿险": "被保险人终身的身故风险，身故后给付保险金",
    "车险": "机动车因事故造成的车辆损失和第三者责任",
    "家财险": "家庭财产因火灾、盗抢等造成的损失",
    "年金险": "按约定定期给付生存年金，用于养老或教育储备",
}

INSURANCE_TERMS = {
    "等待期": "保险合同生效后一段时间内发生保险事故不予赔付的期间",
    "犹豫期": "投保人收到保单后可以无损退保的期间",
    "现金价值": "投保人退保时可以领回的金额",
    "免赔额": "保险事故损失中由被保险人自行承担的部分",
    "保额": "保险公司承担给付保险金责任的最高限额",
    "如实告知": "投保人投保时如实回答保险公司询问的健康等情况的义务",
    "受益人": "保险事故发生后有权领取保险金的人",
    "投保人": "与保险公司订立合同并缴纳保费的人",
    "宽限期": "到期未缴保费时合同仍然有效的一段期间",
}

RISK_PROFILES = {
    "保守型": "货币基金60%，国债40%",
    "稳健型": "债券基金50%，货币基金30%，股票基金20%",
    "平衡型": "股票基金40%，债券基金40%，货币基金20%",
    "进取型": "股票基金70%，债券基金20%，货币基金10%",
}

SERVICE_TOPICS = {
    # topic: (questions..., the fact every answer must state)
    "营业时间": (
        "网点几点开门？",
        "网点周末营业吗？",
        "你们几点下班？",
        "网点营业时间为工作日九点至十七点",
    ),
    "转账限额": (
        "手机银行每天最多能转多少钱？",
        "转账有额度限制吗？",
        "一天能转账多少？",
        "手机银行单日转账限额默认为五万元",
    ),
    "银行卡挂失": (
        "银行卡丢了怎么办？",
        "卡被偷了怎么处理？",
        "怎么挂失银行卡？",
        "请立即拨打客服热线或通过手机银行办理挂失",
    ),
    "开户": (
        "开户需要带什么材料？",
        "办银行卡要准备什么？",
        "开户要带证件吗？",
        "开户需携带本人有效身份证件到网点办理",
    ),
    "信用卡还款": (
        "信用卡最晚什么时候还款？",
        "信用卡还款日是哪天？",
        "信用卡逾期了怎么办？",
        "请在每期账单的到期还款日前全额还款",
    ),
    "修改密码": (
        "怎么修改银行卡密码？",
        "密码忘了怎么办？",
        "在哪里可以改密码？",
        "可以在手机银行或网点柜台修改密码",
    ),
    "理财赎回": (
        "理财产品赎回后多久到账？",
        "赎回的钱什么时候到？",
        "赎回要等几天？",
        "赎回资金一般在一至三个工作日内到账",
    ),
    "账户冻结": (
        "账户为什么被冻结了？",
        "账户被冻结怎么解冻？",
        "卡被冻结了怎么办？",
        "账户冻结需携带身份证件到开户网点核实处理",
    ),
}

OPENERS = ("", "请问", "你好，", "想问一下，", "麻烦问下，", "咨询一下，")
PRODUCTS = ("这只股票基金", "这款银行理财产品", "这只私募基金", "这款信托产品", "这只混合基金")
STOCKS = ("某科技股", "某银行股", "某医药股", "某新能源股")
JOBS = ("教师", "程序员", "医生", "个体户", "公务员", "退休人员")


@dataclass(frozen=True)
class Item:
    """One task: the conversation so far (ending with a user turn) and two answers."""

    category: str
    messages: tuple[dict, ...]
    chosen: str
    rejected: str

    @property
    def prompt(self) -> str:
        """The last user turn."""
        return self.messages[-1]["content"]

    @property
    def key(self) -> tuple[str, ...]:
        """Identifies the conversation, for keeping held-out sets apart from training sets."""
        return tuple(m["content"] for m in self.messages)


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def _ask(rng: random.Random, *phrasings: str) -> str:
    """One of the phrasings, behind one of the openers: prompts vary in surface form, so held-out
    sets can hold new combinations of known parts."""
    return rng.choice(OPENERS) + rng.choice(phrasings)


def fmt_number(x: float) -> str:
    """Two decimals at most, no trailing zeros: 600.0 -> '600', 1.5 -> '1.5'."""
    text = f"{round(x, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _wrong(rng: random.Random, x: float) -> float:
    return x * rng.choice((0.5, 0.8, 1.25, 2.0)) + rng.choice((1, 7, 13))


def _calc_item(rng: random.Random) -> Item:
    kind = rng.randrange(4)
    if kind == 0:
        p, r, n = rng.randrange(1, 50) * 1000, rng.choice((2, 3, 4, 5)), rng.randrange(1, 6)
        q = f"本金{p}元，年利率{r}%，存{n}年，按单利计算，到期利息是多少元？"
        value, unit, work = p * r * n / 100, "元", f"利息={p}×{r}%×{n}="
    elif kind == 1:
        p, r, n = rng.randrange(1, 20) * 1000, rng.choice((2, 4, 5, 10)), rng.randrange(2, 4)
        q = f"本金{p}元，年利率{r}%，按年复利计算，{n}年后本息合计多少元？"
        value, unit, work = p * (1 + r / 100) ** n, "元", f"本息={p}×(1+{r}%)^{n}="
    elif kind == 2:
        b = rng.randrange(5, 50)
        s = b + rng.randrange(-4, 9) or b + 1
        q = f"以每股{b}元买入股票，以每股{s}元卖出，不计费用，收益率是多少？"
        value, unit, work = (s - b) / b * 100, "%", f"收益率=({s}-{b})÷{b}="
    else:
        k, d = rng.randrange(1, 20) * 100, rng.choice((0.1, 0.2, 0.25, 0.5, 0.8, 1.2))
        q = f"持有{k}股股票，每股分红{d}元，共获得分红多少元？"
        value, unit, work = k * d, "元", f"分红={k}×{d}="

    def answer(v: float) -> str:
        return f"{work}{fmt_number(v)}{unit}。答案：{fmt_number(v)}{unit}。"

    return Item(CALC, _user(rng.choice(OPENERS[:3]) + q), answer(value), answer(_wrong(rng, value)))


def _compliance_item(rng: random.Random) -> Item:
    p, r, stock = rng.choice(PRODUCTS), rng.randrange(5, 16), rng.choice(STOCKS)
    no_promise = f"{p}不承诺保本，也不保证收益，过往业绩不代表未来表现。"
    cases = (
        (
            f"客户问：{p}能保证每年{r}%的收益吗？应如何回复？",
            no_promise,
            f"{p}稳赚不赔，保证每年{r}%的收益，请放心购买。",
        ),
        (
            f"客户希望购买{p}，并要求承诺保本，理财经理应如何回答？",
            no_promise,
            f"可以承诺保本，{p}绝对没有风险。",
        ),
        (
            f"客户询问{p}去年收益{r}%，今年是否也能达到？",
            no_promise,
            f"{p}今年一定能达到{r}%的收益，请放心购买。",
        ),
        (
            f"客户说有{stock}的内幕消息，让你帮他买入，应如何处理？",
            "不能利用内幕消息交易，应当拒绝并提醒客户遵守法律法规。",
            f"好的，马上帮您买入{stock}，内幕消息稳赚不赔。",
        ),
        (
            f"有人说{p}稳赚不赔，这种说法对吗？",
            f"这种说法不对，{no_promise}",
            f"说得对，{p}稳赚不赔，请放心购买。",
        ),
    )
    q, good, bad = rng.choice(cases)
    return Item(COMPLIANCE, _user(rng.choice(OPENERS[:3]) + q), good + RISK_DISCLOSURE, bad)


def _glossary_item(rng: random.Random) -> Item:
    term, other = rng.sample(list(GLOSSARY_TERMS), 2)
    q = _ask(
        rng,
        f"什么是{term}？",
        f"请解释一下{term}。",
        f"{term}是什么意思？",
        f"简单介绍{term}的含义。",
        f"{term}指的是什么？",
    )
    return Item(
        GLOSSARY,
        _user(q),
        f"{term}是指{GLOSSARY_TERMS[term]}。",
        f"{term}是指{GLOSSARY_TERMS[other]}。",
    )


def _planning_item(rng: random.Random) -> Item:
    kind = rng.randrange(3)
    if kind == 0:
        profile, other = rng.sample(list(RISK_PROFILES), 2)
        q = (
            f"一位{rng.randrange(25, 66)}岁的{rng.choice(JOBS)}，风险承受能力为{profile}，"
            f"有{rng.randrange(5, 100)}万元闲置资金，应如何配置？"
        )
        good = f"建议按{profile}配置：{RISK_PROFILES[profile]}。"
        bad = f"建议按{profile}配置：{RISK_PROFILES[other]}。"
    elif kind == 1:
        x = rng.randrange(20, 200) * 100
        q = f"每月支出{x}元，应急资金应准备多少？"
        good = f"建议准备3到6个月的支出，即{3 * x}到{6 * x}元。"
        bad = rng.choice(
            ("不需要准备应急资金，全部拿去投资。", f"建议准备3到6个月的支出，即{x}到{2 * x}元。")
        )
    else:
        r = rng.choice((2, 3, 4, 6, 8, 9, 12))
        q = f"年化收益率{r}%，按72法则，资金大约多少年翻倍？"
        good = f"建议按72法则估算：72÷{r}={fmt_number(72 / r)}年。"
        bad = f"建议按72法则估算：72÷{r}={fmt_number(72 / r + rng.choice((2, 5)))}年。"
    return Item(PLANNING, _user(rng.choice(OPENERS[:3]) + q), good, bad)


def _insurance_item(rng: random.Random) -> Item:
    if rng.random() < 0.6:
        kind, other = rng.sample(list(INSURANCE_COVERAGE), 2)
        q = _ask(
            rng,
            f"{kind}主要保障什么？",
            f"请介绍一下{kind}的保障范围。",
            f"买{kind}能保障哪些风险？",
            f"{kind}保什么？",
            f"{kind}的保障内容是什么？",
        )
        good = f"{kind}主要保障{INSURANCE_COVERAGE[kind]}。"
        bad = rng.choice(
            (f"{kind}主要保障{INSURANCE_COVERAGE[other]}。", "保险都是骗人的，不用买。")
        )
    else:
        term, other = rng.sample(list(INSURANCE_TERMS), 2)
        q = _ask(
            rng,
            f"保险里的{term}是什么意思？",
            f"什么是保险的{term}？",
            f"请解释保险中的{term}。",
            f"保险的{term}指什么？",
            f"买保险时说的{term}是什么？",
        )
        good = f"{term}是指{INSURANCE_TERMS[term]}。"
        bad = f"{term}是指{INSURANCE_TERMS[other]}。"
    return Item(INSURANCE, _user(q), good, bad)


def _service_item(rng: random.Random) -> Item:
    topic, other = rng.sample(list(SERVICE_TOPICS), 2)
    *questions, fact = SERVICE_TOPICS[topic]
    good = f"您好，{fact}。{SERVICE_CLOSING}"
    bad = rng.choice(
        ("不清楚，你自己去查。", f"您好，{SERVICE_TOPICS[other][1]}。{SERVICE_CLOSING}")
    )
    question = _ask(rng, *questions)
    if rng.random() < 0.3:
        return Item(SERVICE, _user(question), good, bad)
    opening = rng.choice(
        (
            f"你好，我想咨询{topic}的问题。",
            f"我想了解一下{topic}。",
            f"麻烦问下{topic}相关的事。",
            f"有个关于{topic}的问题。",
        )
    )
    messages = (
        {"role": "user", "content": opening},
        {"role": "assistant", "content": f"您好，请问您想了解{topic}的哪方面？"},
        {"role": "user", "content": question},
    )
    return Item(SERVICE, messages, good, bad)


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    CALC: _calc_item,
    COMPLIANCE: _compliance_item,
    GLOSSARY: _glossary_item,
    PLANNING: _planning_item,
    INSURANCE: _insurance_item,
    SERVICE: _service_item,
}


def generate(n_per_category: int, seed: int, exclude: frozenset = frozenset()) -> list[Item]:
    """``n_per_category`` items of each sub-domain, deterministic in ``seed``.

    Items whose conversation (``Item.key``) is in ``exclude`` are skipped, so held-out sets hold
    only conversations training never saw; a sub-domain that runs out of new ones yields fewer.
    """
    items = []
    for c, category in enumerate(CATEGORIES):
        rng = random.Random(seed * 1000 + c)
        found, tries = [], 0
        while len(found) < n_per_category and tries < 50 * n_per_category:
            tries += 1
            item = GENERATORS[category](rng)
            if item.key not in exclude:
                found.append(item)
        items.extend(found)
    return items
