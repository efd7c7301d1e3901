"""Markdown as Zulip users expect it (issue 14): what users type shows, nothing runs, Zulip's syntax and flags.

The expected HTML is the shape of Zulip's own rendering (its
``zerver/tests/fixtures/markdown_test_cases.json``), with two differences
eventbus keeps: cmark-gfm writes ``<br />`` where Zulip writes ``<br>``, and an
emoji span holds the character itself (Zulip's holds ``:name:`` for its image
sprites).
"""

from __future__ import annotations

import html.parser
import threading
import urllib.parse
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus.messages import MessageStore
from eventbus.processors.markdown import render
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import take, wait_for
from tests.eventserver import Api, StartServer, run
from tests.test_messages import ALLOWED_ATTRS, ALLOWED_TAGS, HOSTILE, Audit, next_events, queued

USERS = {"Iago": (1, "Iago"), "Othello Moor": (2, "Othello Moor"), "Iago Twin": (3, "Iago")}
STREAMS = {"Denmark": (5, "Denmark")}
#: What Zulip's syntax adds to the tags and attributes a message may have.
ZULIP_TAGS = ALLOWED_TAGS | {"div", "time"}
ZULIP_ATTRS = ALLOWED_ATTRS | {"aria-label", "aria-hidden", "role", "datetime", "data-code-language"}


def html_of(source: str) -> str:
    return render(source, USERS.get, STREAMS.get).html


class Text(html.parser.HTMLParser):
    """The text a reader sees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def shown(source: str) -> str:
    reader = Text()
    reader.feed(html_of(source))
    return "".join(reader.parts)


def assert_harmless(output: str) -> None:
    audit = Audit()
    audit.feed(output)
    assert audit.tags <= ZULIP_TAGS, (audit.tags, output)
    assert audit.attrs <= ZULIP_ATTRS, (audit.attrs, output)
    for url in audit.urls:
        assert urllib.parse.urlsplit(url).scheme in ("http", "https", "mailto", ""), (url, output)
        assert not url or url.startswith(("http", "mailto:", "/#narrow/")), (url, output)


# -- raw HTML is shown, as typed ---------------------------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [
    ("use the <div> element", "<p>use the &lt;div&gt; element</p>"),
    ("<script>alert(1)</script> and the rest of the line",
     "<p>&lt;script&gt;alert(1)&lt;/script&gt; and the rest of the line</p>"),
    # Zulip's safe_html cases.
    ("<h1>stay normal</h1> thanks", "<p>&lt;h1&gt;stay normal&lt;/h1&gt; thanks</p>"),
    ("<<script>script>evil()<</script>/script>",
     "<p>&lt;&lt;script&gt;script&gt;evil()&lt;&lt;/script&gt;/script&gt;</p>"),
    ("<script src=http://xx.com/xss.js<b>",  # GitHub's autolinks link the address, which Zulip does not
     '<p>&lt;script src=<a href="http://xx.com/xss.js" target="_blank" rel="noopener noreferrer">http://xx.com/xss.js'
     "</a>&lt;b&gt;</p>"),
    ("*<h1>Hello world</h1>*", "<p><em>&lt;h1&gt;Hello world&lt;/h1&gt;</em></p>"),
    ("**<h1>Hello world</h1>**", "<p><strong>&lt;h1&gt;Hello world&lt;/h1&gt;</strong></p>"),
    ("~~~\n<h1>stay normal</h1>\n~~~",
     '<div class="codehilite"><pre><span></span><code>&lt;h1&gt;stay normal&lt;/h1&gt;\n</code></pre></div>'),
    # HTML blocks: Markdown inside still renders, containers keep their text.
    ("<div>\n**hi**\n</div>", "<p>&lt;div&gt;<br />\n<strong>hi</strong><br />\n&lt;/div&gt;</p>"),
    ("> <div>\n> quoted", "<blockquote>\n<p>&lt;div&gt;<br />\nquoted</p>\n</blockquote>"),
    ("- <!-- a comment -->", "<ul>\n<li>&lt;!-- a comment --&gt;</li>\n</ul>"),
    ("hi <!-- raw HTML omitted --> there", "<p>hi &lt;!-- raw HTML omitted --&gt; there</p>"),
])
def test_raw_html_is_shown_as_text(source: str, expected: str) -> None:
    assert html_of(source) == expected


@pytest.mark.parametrize("source", [
    "<script>\n" * 12 + "x",  # each block swallows the next: deeper than the rewrite goes
    "<style>\nbody{display:none}\n</style>\n<!--\nnever closed\n\n<?php echo 1; ?>\n<![CDATA[ x ]]>\n<!DOCTYPE html>",
    "\t<div>\r\n\t\t<p>tabs and CRLF</p>\r\n</div>",
    "1. <textarea>\n2. <pre>x</pre>\n\n> - <iframe src=https://evil.example></iframe>",
])
def test_nothing_typed_disappears(source: str) -> None:
    seen = " ".join(shown(source).split())
    for word in source.replace("\r", " ").replace("\n", " ").replace("\t", " ").split(" "):
        if word.strip("-.>0123456789"):
            assert word.lstrip("-.>0123456789") in seen, (word, seen)
    assert_harmless(html_of(source))


HOSTILE_MORE = [
    # javascript: in every link form
    "[x](javascript:alert(1))", "<javascript:alert(1)>", "[x](<javascript:alert(1)>)", "[x]( javascript:alert(1) )",
    "[x](JAVASCRIPT:alert(1))", "[x](\\javascript:alert(1))", "[x](java\u0000script:alert(1))",
    "[x](&#106;avascript:alert(1))", "[x](&#x6A;&#x61;vascript:alert(1))", "[x](javascript&colon;alert(1))",
    "[x][r]\n\n[r]: javascript:alert(1)", "![x](javascript:alert(1))", "[![x](javascript:a)](javascript:b)",
    "https://ok.example/\"onmouseover=\"alert(1)", "www.example.com/<script>",
    # event handlers and attributes
    "<img src=x onerror=alert(1)>", '<a href="https://ok.example" onclick="alert(1)">x</a>',
    "<div style=\"background:url(javascript:alert(1))\">x</div>", "<svg/onload=alert(1)>",
    "<details open ontoggle=alert(1)>", "<body onload=alert(1)>",
    # entity tricks
    "&lt;script&gt;alert(1)&lt;/script&gt;", "&#60;script&#62;alert(1)&#60;/script&#62;",
    "<scr&#105;pt>alert(1)</script>",
    "`&lt;b&gt;` &amp;lt;script&amp;gt;",
    # nested markup
    '<scr<script></script>ipt type="text/javascript">alert("foo");</<script></script>script<del></del>>',
    "<<x>script>evil()<</x>/script>", "**<b>*<i>x</i>*</b>**", "> <script>\n> alert(1)\n> </script>",
    # Zulip's own syntax as a carrier
    "```spoiler <img src=x onerror=alert(1)>\n<script>alert(1)</script>\n```",
    '```spoiler " onmouseover="alert(1)\nx\n```', "```quote\n<script>alert(1)</script>\n```",
    '```"><script>alert(1)</script>\ncode\n```', "```py onload=alert(1)\ncode\n```",
    "@**<img src=x onerror=alert(1)>**", "@_**\"><script>alert(1)</script>**", "#**<script>**",
    '<time:"><script>alert(1)</script>>', '<time:" onmouseover="alert(1)>', "<time:javascript:alert(1)>",
    ':"onmouseover=alert(1):', ":smile:<script>alert(1)</script>",
]


@pytest.mark.parametrize("source", HOSTILE + HOSTILE_MORE)
def test_hostile_markdown_runs_nothing(source: str) -> None:
    assert_harmless(html_of(source))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<", ">", "/", "script", "img", " ", "\n", "=", '"', "'", "on", "error", "&",
                                 "#", ";", "x", ":", "javascript", "[", "]", "(", ")", "!", "*", "_", "`", "```",
                                 "~~~", "spoiler", "quote", "@", "**", "time", "-", ">", "\t", "div", "!--", "\\"]),
                max_size=40).map("".join))
def test_any_mix_of_markup_characters_runs_nothing(source: str) -> None:
    assert_harmless(html_of(source))


def test_javascript_links_show_as_typed() -> None:
    assert html_of("[click](javascript:alert(1)) and ![x](data:text/html,x)") == (
        "<p>[click](javascript:alert(1)) and ![x](data:text/html,x)</p>")
    assert html_of("<javascript:alert(1)> [ok](https://ok.example)") == (
        '<p>&lt;javascript:alert(1)&gt; <a href="https://ok.example" target="_blank" rel="noopener noreferrer">ok'
        "</a></p>")


# -- mentions ------------------------------------------------------------------------------------------

def test_user_silent_and_unknown_mentions() -> None:
    rendered = render("@**Othello Moor** @_**Iago** and @_**Othello Moor**, @**Nobody** @_**Nobody** `@_**Iago**`",
                      USERS.get, STREAMS.get)
    assert rendered.html == (
        '<p><span class="user-mention" data-user-id="2">@Othello Moor</span> '
        '<span class="user-mention silent" data-user-id="1">Iago</span> and '
        '<span class="user-mention silent" data-user-id="2">Othello Moor</span>, @**Nobody** @_**Nobody** '
        "<code>@_**Iago**</code></p>")
    assert rendered.mentioned_user_ids == {2}  # a silent mention flags no one
    assert not rendered.mentions_stream_wildcard and not rendered.mentions_topic_wildcard


def test_a_mention_with_an_id_picks_that_user() -> None:
    users = {"Iago": (3, "Iago")}
    rendered = render("@**Iago|3** @**Iago|1** @**|3**", users.get)
    assert rendered.html == '<p><span class="user-mention" data-user-id="3">@Iago</span> @**Iago|1** @**|3**</p>'
    assert rendered.mentioned_user_ids == {3}


@pytest.mark.parametrize("name", ["all", "everyone", "stream", "channel"])
def test_channel_wildcards(name: str) -> None:
    rendered = render(f"hey @**{name}**")
    assert rendered.html == (f'<p>hey <span class="user-mention channel-wildcard-mention" data-user-id="*">@{name}'
                             "</span></p>")
    assert (rendered.mentions_stream_wildcard, rendered.mentions_topic_wildcard) == (True, False)
    silent = render(f"@_**{name}**")
    assert silent.html == (f'<p><span class="user-mention channel-wildcard-mention silent" data-user-id="*">{name}'
                           "</span></p>")
    assert not silent.mentions_stream_wildcard


def test_topic_wildcard() -> None:
    rendered = render("@**topic** and @_**topic**")
    assert rendered.html == ('<p><span class="topic-mention">@topic</span> and '
                             '<span class="topic-mention silent">topic</span></p>')
    assert (rendered.mentions_stream_wildcard, rendered.mentions_topic_wildcard) == (False, True)


def test_group_mentions_stay_text() -> None:  # eventbus has no user groups
    assert html_of("@*support* @_*support*") == "<p>@<em>support</em> @_<em>support</em></p>"


# -- emoji, times, blocks, /me ---------------------------------------------------------------------

def test_emoji() -> None:
    assert html_of(":cat:hello:dog::rabbit: `:cat:` :not_an_emoji: x::y::z :+1:") == (
        '<p><span aria-label="cat" class="emoji emoji-1f408" role="img" title="cat">\U0001f408</span>hello'
        '<span aria-label="dog" class="emoji emoji-1f415" role="img" title="dog">\U0001f415</span>'
        '<span aria-label="rabbit" class="emoji emoji-1f407" role="img" title="rabbit">\U0001f407</span> '
        "<code>:cat:</code> :not_an_emoji: x::y::z "
        '<span aria-label="+1" class="emoji emoji-1f44d" role="img" title="+1">\U0001f44d</span></p>')
    # Variation selectors are left out of the class, as Zulip does; the character keeps it.
    assert 'class="emoji emoji-2764" role="img" title="red heart">\u2764\ufe0f</span>' in html_of(":red_heart:")
    # In a link's address the name is not an emoji; in its text it is.
    assert html_of("[:poop:](https://example.com/:poop:/)") == (
        '<p><a href="https://example.com/:poop:/" target="_blank" rel="noopener noreferrer"><span aria-label="poop" '
        'class="emoji emoji-1f4a9" role="img" title="poop">\U0001f4a9</span></a></p>')


@pytest.mark.parametrize(("source", "expected"), [
    ("<time:2017-06-05T22:30:00Z>", '<p><time datetime="2017-06-05T22:30:00Z">2017-06-05T22:30:00Z</time></p>'),
    ("Let's meet at <time:1496701800>.",
     "<p>Let's meet at <time datetime=\"2017-06-05T22:30:00Z\">1496701800</time>.</p>"),
    ("<time:2017-06-06T00:30:00+02:00>",
     '<p><time datetime="2017-06-05T22:30:00Z">2017-06-06T00:30:00+02:00</time></p>'),
    ("<time:2017-12-31>", '<p><time datetime="2017-12-31T00:00:00Z">2017-12-31</time></p>'),
    ("<time:<alert(1)>>", '<p><span class="timestamp-error">Invalid time format: &lt;alert(1)</span>&gt;</p>'),
    ("<time:next tuesday>", '<p><span class="timestamp-error">Invalid time format: next tuesday</span></p>'),
    ("`<time:1496701800>`", "<p><code>&lt;time:1496701800&gt;</code></p>"),
])
def test_global_times(source: str, expected: str) -> None:
    assert html_of(source) == expected


@pytest.mark.parametrize(("source", "expected"), [
    # Zulip's spoilers_* and fenced quote cases.
    ("```spoiler header\ncontent\n```\noutside spoiler\n",
     '<div class="spoiler-block"><div class="spoiler-header">\n<p>header</p>\n</div><div class="spoiler-content" '
     'aria-hidden="true">\n<p>content</p>\n</div></div>\n<p>outside spoiler</p>'),
    ("```spoiler\ncontent\n```",
     '<div class="spoiler-block"><div class="spoiler-header">\n</div><div class="spoiler-content" aria-hidden="true">'
     "\n<p>content</p>\n</div></div>"),
    ("```spoiler <script>alert(1)</script>\n<script>alert(1)</script>\n```",
     '<div class="spoiler-block"><div class="spoiler-header">\n<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n</div>'
     '<div class="spoiler-content" aria-hidden="true">\n<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n</div></div>'),
    ("~~~quote\n```spoiler header\ncontent\n```\noutside spoiler\n~~~\noutside quote",
     '<blockquote>\n<div class="spoiler-block"><div class="spoiler-header">\n<p>header</p>\n</div><div '
     'class="spoiler-content" aria-hidden="true">\n<p>content</p>\n</div></div>\n<p>outside spoiler</p>\n'
     "</blockquote>\n<p>outside quote</p>"),
    ("Hamlet said:\n~~~ quote\nTo be or **not** to be.\n\nThat is the question\n~~~",
     "<p>Hamlet said:</p>\n<blockquote>\n<p>To be or <strong>not</strong> to be.</p>\n<p>That is the question</p>\n"
     "</blockquote>"),
    ("```quote\n# line 1\n#line 2\n```", "<blockquote>\n<h1>line 1</h1>\n<p>#line 2</p>\n</blockquote>"),
    ("``` inventedlanguage\ndef speak(self):\n    x = 1\n```",
     '<div class="codehilite" data-code-language="inventedlanguage"><pre><span></span><code>def speak(self):\n'
     "    x = 1\n</code></pre></div>"),
    ("````\n```quote\nnot a quote\n```\n````",
     '<div class="codehilite"><pre><span></span><code>```quote\nnot a quote\n```\n</code></pre></div>'),
])
def test_zulip_blocks(source: str, expected: str) -> None:
    assert html_of(source) == expected


def test_mentions_emoji_and_links_inside_a_spoiler() -> None:
    rendered = render("```spoiler [Header](https://example.com) :cat:\n@**Iago**\n```", USERS.get)
    assert '<a href="https://example.com" target="_blank" rel="noopener noreferrer">Header</a> <span aria-label="cat"' \
        in rendered.html
    assert '<span class="user-mention" data-user-id="1">@Iago</span>' in rendered.html
    assert rendered.mentioned_user_ids == {1}


@pytest.mark.parametrize(("source", "is_me"), [
    ("/me is sleeping", True), ("/me <b>waves</b>", True), ("/me", False), ("/me is\ntwo lines", False),
    ("say /me hi", False), ("/meh", False),
])
def test_me_messages(source: str, is_me: bool) -> None:
    assert render(source).is_me_message is is_me


def test_threads_render_with_their_own_parser() -> None:
    sources = [f"**{i}** <b>{i}</b> @**Iago** :cat: <time:{1496701800 + i}>" for i in range(200)]
    expected = [html_of(source) for source in sources]
    results: dict[int, list[str]] = {}

    def render_all(n: int) -> None:
        results[n] = [html_of(source) for source in sources]

    threads = [threading.Thread(target=render_all, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(results[n] == expected for n in range(4))


# -- through the server: flags and notifications ------------------------------------------------------

@pytest.fixture
def chat(event_settings: Settings, users: tuple[User, User]) -> tuple[MessageStore, User, User, User, User]:
    """Iago, Othello, Desdemona and Cassio, all in Denmark."""
    store = MessageStore(event_settings.database)
    iago, othello = users
    desdemona = store.users.create_user("desdemona@example.com", "Desdemona")
    cassio = store.users.create_user("cassio@example.com", "Cassio")
    store.create_stream("Denmark", [iago.id, othello.id, desdemona.id, cassio.id])
    return store, iago, othello, desdemona, cassio


def test_wildcard_and_silent_mentions_flag_recipients_as_zulip_does(
        start_server: StartServer, chat: Any, sender_worker: WorkerThreads) -> None:
    _store, iago, othello, desdemona, cassio = chat
    server = start_server()

    async def scenario() -> None:
        apis = {user.id: Api(server, user) for user in (iago, othello, desdemona, cassio)}
        queues = {user_id: await api.register() for user_id, api in apis.items()}

        async def send(sender: User, content: str) -> None:
            status, body = await apis[sender.id].call("POST", "/messages", type="stream", to="Denmark",
                                                      topic="plans", content=content)
            assert status == 200, body

        await send(othello, "I have been in this topic")
        await send(iago, "@**all** meeting at noon")
        await send(iago, "@**topic** what do you think?")
        await send(iago, "thanks @_**Desdemona** and @_**all**")
        flags = {user_id: [event["flags"] for event in await next_events(apis[user_id], queue, 4)][1:]
                 for user_id, queue in queues.items()}
        wildcard = ["stream_wildcard_mentioned", "wildcard_mentioned"]
        topic = ["topic_wildcard_mentioned", "wildcard_mentioned"]
        assert flags[iago.id] == [["read", *wildcard], ["read", *topic], ["read"]]  # the sender takes part
        assert flags[othello.id] == [wildcard, topic, []]  # sent to the topic before
        assert flags[desdemona.id] == [wildcard, [], []]  # silently mentioned: no flag
        assert flags[cassio.id] == [wildcard, [], []]
        _, history = await apis[othello.id].call("GET", "/messages", anchor="newest", num_before=10, num_after=0)
        assert [m["flags"] for m in history["messages"]][1:] == [wildcard, topic, []]

    run(scenario)


def test_away_users_are_notified_of_wildcard_mentions_not_silent_ones(
        start_server: StartServer, chat: Any, sender_worker: WorkerThreads, event_broker: MemoryBroker) -> None:
    _store, iago, othello, desdemona, cassio = chat
    server = start_server()

    async def scenario() -> None:
        api = Api(server, iago)
        await api.register()  # only iago is here
        for content in ("@_**Othello** @_**everyone** fyi", "@**channel** heads up", "@**topic** anyone?"):
            status, body = await api.call("POST", "/messages", type="stream", to="Denmark", topic="t",
                                          content=content)
            assert status == 200, body

    run(scenario)
    # The channel wildcard notifies the three who are away; the topic one no one (only iago took part).
    wait_for(partial(queued, event_broker, "missedmessage_emails", 3), what="three email notices")
    notices = take(event_broker, "missedmessage_emails")
    assert sorted((n["user_id"], n["trigger"]) for n in notices) == sorted(
        (user.id, "stream_wildcard_mentioned") for user in (othello, desdemona, cassio))
    assert server.call(lambda: server.server.away.sent) == 3
