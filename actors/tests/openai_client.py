"""The official `openai` Python package against `odmoe serve`: a streamed chat
completion, a whole one, a text completion and the model list. Run by openai_python.rs
with the server's base URL; exits non-zero (with a message) on any mismatch."""

import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")

models = client.models.list()
model = models.data[0].id

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Who art thou?"}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, roles = [], None, None, []
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
assert roles == ["assistant"], roles
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 16, usage
assert sum(c.isalpha() for c in streamed) > 5, repr(streamed)

whole = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Who art thou?"}],
    max_tokens=16,
    temperature=0,
)
assert whole.choices[0].message.content == streamed, (whole.choices[0].message.content, streamed)
assert whole.usage.completion_tokens == 16

text = client.completions.create(model=model, prompt="ROMEO:", max_tokens=8, temperature=0)
assert text.choices[0].text and text.choices[0].finish_reason == "length", text

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    assert "n = 1" in str(e), e

print(f"openai {openai.__version__}: ok ({streamed!r})")
