"""The official OpenAI Python SDK against a running tether: /v1 as a client of it sees it.

Run by the Rust integration tests (tests/api/openai.rs with the fake CLI, and
tests/api/real_claude.rs with the real CLI against the stand-in API), which start tether and
pass it here:

    TETHER_BASE_URL   http://127.0.0.1:PORT
    TETHER_TOKEN      a user token
    TETHER_PROJECT    a project folder inside tether's projects.roots
    TETHER_AGENT_FAILS  "1" when the agent can be told to fail a turn (the fake CLI's `[error]`)

The agent must echo the conversation's user texts in each reply (the fake CLI does; the
stand-in API does with `echo_conversation`), so that the reply shows whether context was kept.
Prints one line per check; exits non-zero at the first that fails.
"""

import json
import os
import sys
import urllib.request

import openai
from openai import OpenAI

BASE = os.environ["TETHER_BASE_URL"]
TOKEN = os.environ["TETHER_TOKEN"]
PROJECT = os.environ["TETHER_PROJECT"]
AGENT_FAILS = os.environ.get("TETHER_AGENT_FAILS") == "1"
MODEL = "claude"

checks = 0


def check(what, ok, detail=""):
    global checks
    if not ok:
        print(f"FAILED: {what} {detail}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def tether_get(path):
    """A GET on tether's own API (not /v1), with the same token."""
    req = urllib.request.Request(BASE + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.load(res)


def last_reply(conversation_id):
    messages = tether_get(f"/api/sessions/{conversation_id}/messages")["messages"]
    return [m for m in messages if m["role"] == "assistant"][-1]["text"]


# No retries: a retried completion would be a second turn, and each check must see one answer.
client = OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0, timeout=120)

models = client.models.list()
check("the agent is listed as a model", [m.id for m in models.data] == [MODEL], models)

# A completion in a new conversation.
raw = client.chat.completions.with_raw_response.create(
    model=MODEL,
    messages=[
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Remember the word BANANA"},
    ],
    extra_body={"project_path": PROJECT},
)
first = raw.parse()
conversation = first.conversation_id
check("a completion names its conversation", bool(conversation), first)
check(
    "the conversation is also a header",
    raw.headers.get("x-conversation-id") == conversation,
    dict(raw.headers),
)
check("the model is the agent", first.model == MODEL, first.model)
reply = first.choices[0].message.content
check("the completion carries the reply", reply == last_reply(conversation), reply)
check("it finished", first.choices[0].finish_reason == "stop", first.choices[0])
check(
    "usage comes from the CLI's result",
    first.usage.completion_tokens > 0
    and first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens,
    first.usage,
)

# A second completion in the same conversation: only its own message is sent, and the
# agent still knows the first one.
second = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Which word did I ask you to remember?"}],
    extra_body={"conversation_id": conversation},
)
text = second.choices[0].message.content
check("the same conversation goes on", second.conversation_id == conversation, second)
check("the context was kept", "BANANA" in text and "Which word" in text, text)

# A streamed completion: its chunks join to the reply that tether stored.
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Tell me a short story about a tether"}],
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"conversation_id": conversation},
)
pieces, finish, usage, ids = [], None, None, set()
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
check("the reply streamed in several chunks", len(pieces) >= 2, pieces)
check("the chunks join to the reply", streamed == last_reply(conversation), streamed)
check("the stream finished", finish == "stop", finish)
check("the stream's usage came last", usage is not None and usage.total_tokens > 0, usage)
check("every chunk is of one completion", len(ids) == 1, ids)

# Errors, as the SDK's exception types.
try:
    client.chat.completions.create(
        model="gpt-nothing", messages=[{"role": "user", "content": "hi"}]
    )
    check("an unknown model is refused", False)
except openai.NotFoundError as e:
    check("an unknown model is NotFoundError", e.status_code == 404, e)
    check("its error has OpenAI's fields", (e.code, e.type, e.param) == (
        "model_not_found", "not_found_error", "model"), e.body)

try:
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"conversation_id": "00000000-0000-4000-8000-000000000000"},
    )
    check("an unknown conversation is refused", False)
except openai.NotFoundError as e:
    check("an unknown conversation is NotFoundError", e.param == "conversation_id", e.body)

try:
    client.chat.completions.create(model=MODEL, messages=[])
    check("no messages is refused", False)
except openai.BadRequestError as e:
    check("no messages is BadRequestError", e.code == "invalid_messages", e.body)

stranger = OpenAI(base_url=BASE + "/v1", api_key="not-a-token", max_retries=0)
try:
    stranger.models.list()
    check("a bad key is refused", False)
except openai.AuthenticationError as e:
    check("a bad key is AuthenticationError", e.type == "authentication_error", e.body)

if AGENT_FAILS:
    try:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "fail now [error]"}],
            extra_body={"conversation_id": conversation},
        )
        check("a failed turn is an error", False)
    except openai.InternalServerError as e:
        check("a failed turn is InternalServerError", e.code == "turn_failed", e.body)
    try:
        for _ in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "fail again [error]"}],
            stream=True,
            extra_body={"conversation_id": conversation},
        ):
            pass
        check("a failed streamed turn is an error", False)
    except openai.APIError as e:
        check("a failed streamed turn raises APIError", "529" in e.message, e.message)

print(f"openai SDK: all {checks} checks passed", flush=True)
