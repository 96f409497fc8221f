"""OpenAI-compatible server backend (`backend.name: openai_server`): a continuous-batching cell
whose engine is a server already running (vLLM, SGLang, TGI, trtllm-serve, transformers serve),
reached over HTTP. serve(requests) sends the cell's request set to `/v1/completions` or
`/v1/chat/completions`, streaming (server-sent events), with the cell's arrivals, and returns the
ServingResult our in-process engines return (tokencarbon.backends.ServingEngine).

Per request: arrival (when its scheduled time came, before it may wait for a free slot of the
at most max_num_seqs in flight), first token (the first event carrying generated text) and finish
(the event carrying its finish_reason), each on the monotonic and wall clocks, and the prompt and
output tokens the server reports (`usage`, asked for with stream_options.include_usage). The
server's steps are not visible: ServingResult.steps is empty, as for transformers' manager.

What a stream tells, and what it cannot:
- times are taken when the client parses an event, so they include the network and the client's
  own delay (on one host: microseconds, growing with the events per second the client parses);
- a token that decodes to no text (part of a multi-byte character, a special token) sends no text:
  the first token is then stamped at the first token that does, a later time; a request with no
  text at all is stamped at its finish (counted in details as first_token_from_finish);
- servers may merge several tokens into one event (transformers serve does when its detokenizer
  falls behind), so per-token times are not recorded; token counts come from usage only.

Output lengths (`length_control`). Our engines generate each request's exact output length, EOS
ignored. A server does so where it takes a way to force it: `ignore_eos` sends ignore_eos true
with min_tokens = max_tokens (vLLM, SGLang, trtllm-serve); `transformers` sends generation_config
{"eos_token_id": -1} (transformers serve, which refuses fields it does not know); both are checked
against the usage of every request, and a request served with another length fails the serve.
`none` sends max_tokens only: the server may stop at its EOS, the real lengths are recorded, and
check_server_result is the documented relaxation of the cell's exact-length check for it.

Prompts (`prompt`). token_ids sends the workload's ids to /v1/completions (the server's prompt
tokens equal the workload's, checked); text sends them decoded by the model family's tokenizer
(every server takes text; the server re-tokenizes, and its count is recorded as it reports it);
auto probes once at start whether the server takes token ids. chat sends the text as one user
message, so the server's chat template adds tokens: its count is recorded.

Concurrency: asyncio, one event loop and one httpx2.AsyncClient (httpx2: the maintained HTTP
client huggingface_hub already depends on, with server-sent events built in) for the whole request
set. A request is a coroutine that sleeps until its arrival, takes one of max_num_seqs slots
(asyncio.Semaphore) and reads its stream. Chosen over threads because hundreds of open streams
are hundreds of idle sockets, which one loop waits on at once (epoll) with no thread per stream
and no GIL hand-over between stream readers, and one loop's clock schedules every arrival (as
vLLM's benchmark_serving does with aiohttp). serve() runs the loop with asyncio.run, so it cannot
be called from inside a running event loop (TokencarbonError).

Failures end the serve with ServerError naming the request and what happened (an HTTP error, an
error event mid-stream, a stream that ended before its finish_reason or usage, a stall longer
than read_timeout_s, a request longer than request_timeout_s, a length the server did not honour);
the other requests in flight are cancelled (their connections closed, which stops their generation
on servers that watch disconnects) and nothing is returned, so nothing half-served can be written
as a finished cell. A server that does not answer, or does not serve `model`, is refused when the
engine is built (before the warm-up, the idle window and the measured work).

The API key is read from the environment variable named by api_key_env when the engine is built
and only ever sent as an Authorization header: it is in no setting, record, message or log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import yaml

from tokencarbon.backends import Request, RequestRecord, ServingResult
from tokencarbon.errors import ConfigError, TokencarbonError

KEY = "backend.openai_server"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "openai_server.schema.yaml"
ENDPOINT_PATHS = {"completions": "/completions", "chat": "/chat/completions"}
# Body fields tokencarbon sets on every request; extra_body cannot give them.
BASE_FIELDS = ("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "n",
               "stream", "stream_options", "temperature")  # fmt: skip
LENGTH_FIELDS = {"ignore_eos": ("ignore_eos", "min_tokens"), "transformers": ("generation_config",),
                 "none": ()}  # fmt: skip
# The token-id prompt of the start-up probe: id 1 exists in any vocabulary.
PROBE_IDS = (1,)
PROBE_TEXT = "Hello"
# Characters of a server's error body quoted in a message.
QUOTE_CHARS = 600


class ServerError(TokencarbonError):
    """The server failed a request while serving (HTTP error, error event, cut or stalled stream,
    a length it did not honour)."""


class ServerUnavailableError(TokencarbonError):
    """The server does not answer at base_url (refused, unresolvable, timed out)."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """backend.openai_server checked (server_settings); the schema fragment says what each means.
    Holds the name of the API key's variable, never the key."""

    base_url: str
    model: str
    api_key_env: str | None = None
    endpoint: str = "completions"
    prompt: str = "auto"
    length_control: str = "ignore_eos"
    temperature: float = 0.0
    gpus: tuple[int | str, ...] = ()
    server_pid: int | None = None
    server_cgroup: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    request_timeout_s: float | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    trust_env: bool = False

    def url(self, path: str) -> str:
        """base_url + path ("/models", "/completions", ...)."""
        return self.base_url.rstrip("/") + path

    def record(self) -> dict[str, Any]:
        """For meta.json: every setting (the key's variable name, not the key)."""
        out = dataclasses.asdict(self)
        out["gpus"] = list(self.gpus)
        out["extra_body"] = dict(self.extra_body)
        return out


def load_schema() -> dict[str, Any]:
    """The schema fragment of backend.openai_server (workflow/schemas/openai_server.schema.yaml)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _schema_message(error) -> str:
    key = ".".join([KEY, *(str(p) for p in error.absolute_path)])
    return (
        f"invalid config at key {key}: value {error.instance!r}: {error.message} "
        f"(schema: workflow/schemas/openai_server.schema.yaml; docs/server.md)"
    )


def server_settings(raw: Mapping[str, Any] | None) -> ServerSettings:
    """backend.openai_server checked against its schema and for what a schema cannot say; returns
    ServerSettings with the schema's defaults filled in.

    Raises ConfigError naming the key, the value and the fix: a missing or mistyped key, a
    base_url that is not http(s)://host[:port]/.../v1 or that holds credentials, server_pid with
    server_cgroup, an extra_body field tokencarbon sets itself."""
    import jsonschema

    if raw is None:
        raise ConfigError(
            f"{KEY}: missing; backend.name openai_server needs at least base_url and model, e.g. "
            "{base_url: 'http://localhost:8000/v1', model: 'meta-llama/Llama-3.1-8B-Instruct'}"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{KEY}: {raw!r}; expected a mapping of its options (docs/server.md)")
    schema = load_schema()
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(dict(raw)),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        raise ConfigError(_schema_message(errors[0]))
    defaults = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    values = defaults | dict(raw)
    values["gpus"] = tuple(values["gpus"])
    values["extra_body"] = dict(values["extra_body"])
    settings = ServerSettings(**values)

    parts = urlsplit(settings.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{KEY}.base_url: {settings.base_url!r} is not an http(s) URL with a host; expected "
            "e.g. 'http://localhost:8000/v1'"
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"{KEY}.base_url: holds credentials (user:password@); results would record them: "
            "give the key through api_key_env (an environment variable's name) instead"
        )
    if not parts.path.rstrip("/").endswith("/v1") or parts.query or parts.fragment:
        raise ConfigError(
            f"{KEY}.base_url: {settings.base_url!r}; expected the OpenAI API base as the openai "
            f"client takes it, ending in /v1 (e.g. '{parts.scheme}://{parts.netloc}/v1')"
        )
    if settings.server_pid is not None and settings.server_cgroup is not None:
        raise ConfigError(
            f"{KEY}: server_pid ({settings.server_pid}) and server_cgroup "
            f"({settings.server_cgroup!r}) both given; name the server's processes one way"
        )
    reserved = set(BASE_FIELDS) | set(LENGTH_FIELDS[settings.length_control])
    clash = sorted(reserved & set(settings.extra_body))
    if clash:
        raise ConfigError(
            f"{KEY}.extra_body: sets {clash}, which tokencarbon sets on every request (from the "
            f"cell's requests, temperature and length_control {settings.length_control!r}); "
            "remove them from extra_body"
        )
    if settings.endpoint == "chat" and settings.prompt == "token_ids":
        raise ConfigError(
            f"{KEY}.prompt: 'token_ids' with endpoint 'chat'; chat messages are text: use prompt "
            "'text' (or 'auto'), or endpoint 'completions' to send token ids"
        )
    return settings


def api_key(settings: ServerSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key from the variable api_key_env names (None where no variable is named). Raises
    ConfigError naming the variable, never its value, when it is unset or empty."""
    if settings.api_key_env is None:
        return None
    value = environ.get(settings.api_key_env, "")
    if not value.strip():
        raise ConfigError(
            f"{KEY}.api_key_env: names the environment variable {settings.api_key_env}, which is "
            f"{'empty' if settings.api_key_env in environ else 'not set'} here; export it in the "
            "environment the cell runs in (the key is never read from config)"
        )
    return value.strip()


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _timeout(settings: ServerSettings) -> httpx2.Timeout:
    c = settings.connect_timeout_s
    return httpx2.Timeout(connect=c, read=settings.read_timeout_s, write=c, pool=None)


def _quote(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " ..."


# ---------------------------------------------------------------- endpoint checks (doctor)


@dataclass(frozen=True)
class ServerInfo:
    """What the server said at start: the ids of /v1/models, the `server` header, the prompt form
    used (token_ids or text) and whether the length-control fields were accepted."""

    model_ids: tuple[str, ...]
    server_header: str | None
    prompt_form: str | None = None
    length_fields_accepted: bool | None = None


def list_models(settings: ServerSettings, key: str | None = None) -> ServerInfo:
    """GET base_url/models. Raises ServerUnavailableError (nothing answers: refused,
    unresolvable, timed out) naming base_url, ServerError for an HTTP error or an answer that is
    not an OpenAI model list, ConfigError when `model` is not among the ids (naming them)."""
    url = settings.url("/models")
    try:
        with httpx2.Client(headers=_headers(key), timeout=_timeout(settings),
                           trust_env=settings.trust_env) as client:  # fmt: skip
            response = client.get(url)
    except httpx2.TransportError as exc:
        raise ServerUnavailableError(
            f"{KEY}.base_url: no OpenAI-compatible server answers at {settings.base_url} "
            f"({type(exc).__name__}: {exc}); start the server first, or fix base_url (host, port "
            "and the /v1 path)"
        ) from exc
    if response.status_code in (401, 403):
        raise ConfigError(
            f"{KEY}.api_key_env: {url} answered HTTP {response.status_code} "
            f"({_quote(response.text)}); the server wants an API key: put it in the environment "
            "variable api_key_env names"
        )
    if response.status_code != 200:
        raise ServerError(
            f"{url} answered HTTP {response.status_code}: {_quote(response.text)}; expected an "
            "OpenAI model list (is base_url the API base, ending in /v1?)"
        )
    try:
        ids = tuple(str(m["id"]) for m in response.json()["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError(
            f"{url}: not an OpenAI model list ({_quote(response.text)}); is base_url the API "
            "base, ending in /v1?"
        ) from exc
    if settings.model not in ids:
        raise ConfigError(
            f"{KEY}.model: {settings.model!r} is not served at {settings.base_url}; it serves "
            f"{list(ids)}: set model to one of them"
        )
    return ServerInfo(ids, response.headers.get("server"))


def length_fields(length_control: str, output_len: int) -> dict[str, Any]:
    """The body fields that force `output_len` tokens under length_control (besides max_tokens):
    ignore_eos -> {"ignore_eos": true, "min_tokens": n}; transformers -> {"generation_config":
    '{"eos_token_id": -1}'} (an EOS no token can match); none -> {}."""
    if length_control == "ignore_eos":
        return {"ignore_eos": True, "min_tokens": output_len}
    if length_control == "transformers":
        return {"generation_config": json.dumps({"eos_token_id": -1})}
    if length_control == "none":
        return {}
    raise ConfigError(
        f"{KEY}.length_control: {length_control!r}; expected one of {sorted(LENGTH_FIELDS)}"
    )


def request_body(settings: ServerSettings, prompt: Sequence[int] | str, output_len: int) -> dict:
    """The JSON body of one streamed request: extra_body, then model, the prompt (completions:
    ids or text; chat: one user message), max_tokens = output_len, n 1, temperature, stream with
    usage, and the length_control fields."""
    body: dict[str, Any] = dict(settings.extra_body)
    body |= {"model": settings.model, "max_tokens": output_len, "n": 1,
             "temperature": settings.temperature, "stream": True,
             "stream_options": {"include_usage": True}}  # fmt: skip
    if settings.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = list(prompt) if not isinstance(prompt, str) else prompt
    return body | length_fields(settings.length_control, output_len)


def _post_probe(settings: ServerSettings, key: str | None, body: dict) -> httpx2.Response:
    body = {**body, "stream": False}
    body.pop("stream_options", None)
    url = settings.url(ENDPOINT_PATHS[settings.endpoint])
    try:
        with httpx2.Client(headers=_headers(key), timeout=_timeout(settings),
                           trust_env=settings.trust_env) as client:  # fmt: skip
            return client.post(url, json=body)
    except httpx2.TransportError as exc:
        raise ServerUnavailableError(
            f"{url}: no answer to a 1-token probe ({type(exc).__name__}: {exc})"
        ) from exc


def probe_server(settings: ServerSettings, key: str | None = None,
                 text: str = PROBE_TEXT) -> ServerInfo:  # fmt: skip
    """list_models, then two short requests (untimed; before any measurement): which prompt form
    to use (prompt auto: token ids PROBE_IDS to /v1/completions, accepted with HTTP 200 or not)
    and whether the server takes the length_control fields (a 1-token request with them).

    Raises what list_models raises, and ConfigError naming length_control and the server's answer
    when it refuses those fields (HTTP 400 or 422), ServerError for any other HTTP error."""
    info = list_models(settings, key)
    form = settings.prompt
    if settings.endpoint == "chat":
        form = "text"
    elif form == "auto":
        body = {"model": settings.model, "prompt": list(PROBE_IDS), "max_tokens": 1, "n": 1,
                "temperature": settings.temperature, **settings.extra_body}  # fmt: skip
        response = _post_probe(settings, key, body)
        if response.status_code >= 500:
            raise ServerError(
                f"{settings.url('/completions')}: a 1-token probe got HTTP {response.status_code}: "
                f"{_quote(response.text)}"
            )
        form = "token_ids" if response.status_code == 200 else "text"
    prompt = list(PROBE_IDS) if form == "token_ids" else text
    response = _post_probe(settings, key, request_body(settings, prompt, 1))
    if response.status_code in (400, 422) and settings.length_control != "none":
        raise ConfigError(
            f"{KEY}.length_control: {settings.length_control!r} sends "
            f"{list(LENGTH_FIELDS[settings.length_control])}, which the server refused (HTTP "
            f"{response.status_code}: {_quote(response.text)}); use the length_control this "
            "server takes (docs/server.md: ignore_eos for vLLM, SGLang and trtllm-serve, "
            "transformers for transformers serve), or none to record the lengths it serves"
        )
    if response.status_code != 200:
        raise ServerError(
            f"{settings.url(ENDPOINT_PATHS[settings.endpoint])}: a 1-token probe got HTTP "
            f"{response.status_code}: {_quote(response.text)}"
        )
    accepted = settings.length_control != "none"
    return dataclasses.replace(info, prompt_form=form, length_fields_accepted=accepted)


@dataclass(frozen=True)
class DoctorCheck:
    """One line of `tokencarbon doctor`: what was checked, whether it passed, what was found."""

    name: str
    ok: bool
    detail: str


def doctor(raw: Mapping[str, Any] | None, environ: Mapping[str, str] = os.environ,
           platform_kind: str = "gpu", imported_power_log: str | None = None,
           tokenizer: str | None = None) -> list[DoctorCheck]:  # fmt: skip
    """The checks `tokencarbon doctor` prints for a server backend, each a DoctorCheck, in order:
    settings (the schema and server_settings), api key (api_key_env set), endpoint (the server
    answers /v1/models), model (listed there), prompt and lengths (probe_server), energy (the
    host is this one and its GPUs are named, or a power log is imported: check_server_host), GPUs
    (resolved through NVML) and server processes (found). A failed check stops the checks that
    need it. tokenizer: the model family's, to write the text probe as the cell would (else
    PROBE_TEXT). Never raises for what it checks: every failure is a DoctorCheck with ok False."""
    from tokencarbon.backends import server_gpus

    checks: list[DoctorCheck] = []
    try:
        settings = server_settings(raw)
    except ConfigError as exc:
        return [DoctorCheck("settings", False, str(exc))]
    checks.append(DoctorCheck("settings", True, f"{settings.base_url} model {settings.model!r}"))
    try:
        key = api_key(settings, environ)
        checks.append(DoctorCheck("api key", True, "none" if key is None else
                                  f"from ${settings.api_key_env}"))  # fmt: skip
    except ConfigError as exc:
        return checks + [DoctorCheck("api key", False, str(exc))]
    try:
        info = list_models(settings, key)
        checks.append(DoctorCheck("endpoint", True, f"{settings.url('/models')} answers "
                                  f"(server: {info.server_header})"))  # fmt: skip
        checks.append(
            DoctorCheck("model", True, f"{settings.model!r} among {list(info.model_ids)}")
        )
        text = PROBE_TEXT if tokenizer is None else text_decoder(tokenizer)(list(PROBE_IDS))
        info = probe_server(settings, key, text=text or PROBE_TEXT)
        checks.append(DoctorCheck("prompt and lengths", True,
                                  f"prompts as {info.prompt_form}, length_control "
                                  f"{settings.length_control!r} accepted"))  # fmt: skip
    except ServerUnavailableError as exc:
        checks.append(DoctorCheck("endpoint", False, str(exc)))
    except (ConfigError, ServerError) as exc:
        name = "model" if f"{KEY}.model" in str(exc) else "prompt and lengths"
        checks.append(DoctorCheck(name, False, str(exc)))
    try:
        how = server_gpus.check_server_host(settings.base_url, settings.gpus, imported_power_log,
                                            platform_kind=platform_kind)  # fmt: skip
        checks.append(DoctorCheck("energy", True, f"power from {how}"))
    except ConfigError as exc:
        return checks + [DoctorCheck("energy", False, str(exc))]
    if how != "nvml":
        return checks
    try:
        gpus = server_gpus.resolve_gpus(settings.gpus)
        checks.append(DoctorCheck("gpus", True, "; ".join(
            f"{g.index} {g.name} {g.uuid}" for g in gpus)))  # fmt: skip
        processes = server_gpus.server_processes(gpus, settings.server_pid, settings.server_cgroup)
        checks.append(DoctorCheck("server processes", True,
                                  f"{processes.how}: pids {sorted(processes.pids())}"))  # fmt: skip
    except TokencarbonError as exc:
        checks.append(DoctorCheck("gpus", False, str(exc)))
    return checks


# ---------------------------------------------------------------- serving


@dataclass
class Stream:
    """One request's stream as it is read: its times (monotonic, wall ns) of arrival, sending,
    first token and finish, finish_reason, usage, events read, streamed text pieces."""

    request: Request
    arrival: tuple[int, int] = (0, 0)
    sent: tuple[int, int] = (0, 0)
    first: tuple[int, int] | None = None
    finish: tuple[int, int] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    events: int = 0
    text: list[str] = field(default_factory=list)
    done: bool = False  # [DONE] seen


def _stamp() -> tuple[int, int]:
    return time.monotonic_ns(), time.time_ns()


def _event_text(choice: Mapping[str, Any], endpoint: str) -> str:
    """The generated text an event's choice carries (completions: text; chat: delta content or
    reasoning content)."""
    if endpoint == "completions":
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    delta = choice.get("delta") or {}
    parts = [delta.get(k) for k in ("content", "reasoning_content", "reasoning")]
    return "".join(p for p in parts if isinstance(p, str))


def _error_text(event: Mapping[str, Any]) -> str | None:
    """The error an event reports: {"error": ...} (transformers serve, vLLM) or an ErrorResponse
    {"object": "error", "message": ...}; None for an ordinary event."""
    if "error" in event and event["error"] is not None:
        err = event["error"]
        return err.get("message", json.dumps(err)) if isinstance(err, Mapping) else str(err)
    if event.get("object") == "error":
        return str(event.get("message", event))
    return None


def take_event(st: Stream, data: Any, now: tuple[int, int], endpoint: str, what: str) -> None:
    """One parsed stream event into the request's record: `now` (monotonic, wall ns) becomes its
    first token at the first choice carrying generated text (_event_text), its finish at the
    choice carrying a finish_reason (a non-empty one: TGI sends "" until the last event); a usage
    object is kept (the last one wins). Raises ServerError for an event that is no JSON object or
    reports an error (_error_text)."""
    if not isinstance(data, Mapping):
        raise ServerError(f"{what}: event {st.events} is not a JSON object: {_quote(str(data))}")
    error = _error_text(data)
    if error is not None:
        raise ServerError(
            f"{what}: the server reported an error mid-stream, after {st.events - 1} events: "
            f"{_quote(error)}"
        )
    for choice in data.get("choices") or ():
        text = _event_text(choice, endpoint)
        if text:
            st.text.append(text)
            if st.first is None:
                st.first = now
        if choice.get("finish_reason"):
            st.finish, st.finish_reason = now, str(choice["finish_reason"])
    if data.get("usage"):
        st.usage = data["usage"]


@dataclass(frozen=True)
class LengthPolicy:
    """What a server's reported lengths must be: output_exact (the lengths were forced: each
    request exactly its output_len) and prompt_exact (token ids to /v1/completions: the server's
    prompt tokens equal the workload's)."""

    output_exact: bool
    prompt_exact: bool


def check_lengths(request: Request, prompt_tokens: int, output_tokens: int, policy: LengthPolicy,
                  finish_reason: str | None = None) -> bool:  # fmt: skip
    """Whether the lengths a server reported for `request` are what `policy` allows; returns True
    where the output is shorter than asked (allowed only without forcing), False where exact.

    Forced (policy.output_exact): output_tokens must equal request.output_len. Not forced: 1 <=
    output_tokens <= output_len (the server may stop at its EOS, never before a first token, never
    past max_tokens). Prompt: equal to len(request.prompt) where policy.prompt_exact, else >= 1
    (re-tokenized text or a chat template). Raises ServerError naming the request, both counts,
    the finish_reason and the setting at fault."""
    rid, asked, got = request.request_id, request.output_len, output_tokens
    if policy.output_exact and got != asked:
        raise ServerError(
            f"request {rid!r}: asked {asked} output tokens with the length forced, the server "
            f"reported {got} (finish_reason {finish_reason!r}); it does not honour "
            f"{KEY}.length_control: use the one it takes, or none to record real lengths "
            "(docs/server.md)"
        )
    if not 1 <= got <= asked:
        raise ServerError(
            f"request {rid!r}: the server reported {got} output tokens for max_tokens {asked} "
            f"(finish_reason {finish_reason!r}); expected 1..{asked}"
        )
    want = len(request.prompt)
    if (policy.prompt_exact and prompt_tokens != want) or prompt_tokens < 1:
        raise ServerError(
            f"request {rid!r}: the server reported {prompt_tokens} prompt tokens for "
            f"{'the ' + str(want) + ' token ids sent' if policy.prompt_exact else 'its prompt'}; "
            f"expected {want if policy.prompt_exact else '>= 1'}"
        )
    return got < asked


def _needs_decode(settings: ServerSettings, why: str) -> str:
    return (
        f"{KEY}.prompt: prompts go to {settings.base_url} as text ({why}), which needs the model "
        "family's tokenizer to decode the workload's ids: give the engine decode= (engine_for_cell"
        "'s tokenizer, families.<family>.tokenizer)"
    )


class OpenAIServerEngine:
    """A running OpenAI-compatible server as a ServingEngine (module docstring): serve() sends a
    request set with up to max_num_seqs requests in flight and returns a ServingResult of
    per-request times and the server's token counts."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        max_num_seqs: int,
        decode: Callable[[Sequence[int]], str] | None = None,
        environ: Mapping[str, str] = os.environ,
    ):
        """settings: server_settings(config). max_num_seqs: requests in flight at most (the cell's
        cb{n}). decode: token ids -> text, the model family's tokenizer (needed where prompts go
        as text: prompt text, chat, or auto on a server that refuses token ids).

        Checks the server before any measurement (probe_server): raises ServerUnavailableError
        when nothing answers at base_url, ConfigError for a model it does not serve (naming the
        ones it does), an API key variable unset, length_control fields it refuses, or text
        prompts without `decode`."""
        if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs={max_num_seqs!r}; expected a whole number >= 1")
        self.settings, self.max_num_seqs, self._decode = settings, max_num_seqs, decode
        self._key = api_key(settings, environ)
        text_only = settings.endpoint == "chat" or settings.prompt == "text"
        if text_only and decode is None:
            raise ConfigError(_needs_decode(settings, "endpoint chat" if settings.endpoint ==
                                            "chat" else "prompt text"))  # fmt: skip
        probe_text = decode(list(PROBE_IDS)) if decode is not None else PROBE_TEXT
        self.info = probe_server(settings, self._key, text=probe_text or PROBE_TEXT)
        if self.info.prompt_form == "text" and decode is None:
            raise ConfigError(_needs_decode(settings, "the server refused token ids"))
        self.policy = LengthPolicy(
            output_exact=settings.length_control != "none",
            prompt_exact=self.info.prompt_form == "token_ids",
        )
        self.details: list[dict[str, Any]] = []  # per request of the last serve()
        self.texts: dict[str, str] = {}  # per request id, the text the last serve() streamed

    # ------------------------------------------------------------ serving

    def _prompt(self, request: Request) -> list[int] | str:
        if self.info.prompt_form == "token_ids":
            return list(request.prompt)
        return self._decode(list(request.prompt))

    def serve(self, requests: list[Request]) -> ServingResult:
        """Serve `requests` through the server (module docstring), each sent when its arrival_s
        after the start has come and a slot of max_num_seqs is free. Returns the ServingResult:
        window from the start to the last finish; per request arrival, first token and finish on
        both clocks and the server's prompt and output tokens; no steps, no token ids.

        Raises ServerError naming the request for any failure (nothing is returned), ConfigError
        for an empty or duplicated request set, TokencarbonError when called inside a running
        event loop."""
        self.details, self.texts = [], {}  # a failed serve leaves nothing of an earlier one
        if not requests:
            raise ConfigError("serve(): an empty request set; a cell serves at least one request")
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ConfigError("serve(): request ids repeat; each request needs its own id")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise TokencarbonError(
                "OpenAIServerEngine.serve() runs its own event loop (asyncio.run) and was called "
                "from inside a running one; call it from a thread without an event loop"
            )
        prompts = {r.request_id: self._prompt(r) for r in requests}  # decoded before the window
        streams, (start_ns, start_wall_ns) = asyncio.run(self._serve(requests, prompts))
        records, details = [], []
        for r in requests:
            s = streams[r.request_id]
            prompt_tokens = int(s.usage["prompt_tokens"])
            output_tokens = int(s.usage["completion_tokens"])
            first = s.first if s.first is not None else s.finish
            records.append(RequestRecord(
                r.request_id, prompt_tokens, output_tokens, s.arrival[0], first[0], s.finish[0],
                s.arrival[1], first[1], s.finish[1], preemptions=None,
            ))  # fmt: skip
            details.append({
                "request_id": r.request_id,
                "prompt_tokens_sent": len(r.prompt),
                "prompt_tokens_served": prompt_tokens,
                "output_tokens_asked": r.output_len,
                "output_tokens_served": output_tokens,
                "finish_reason": s.finish_reason,
                "events": s.events,
                "text_chars": sum(map(len, s.text)),
                "first_token_from_finish": s.first is None,
                # how late the request went out after its arrival (waiting for a slot)
                "queued_ns": s.sent[0] - s.arrival[0],
                # how late its arrival was stamped after its schedule (the client's own lag)
                "arrival_lag_ns": s.arrival[0] - start_ns - round(r.arrival_s * 1e9),
            })  # fmt: skip
        self.details = details
        self.texts = {r.request_id: "".join(streams[r.request_id].text) for r in requests}
        records.sort(key=lambda rec: (rec.arrival_ns, rec.request_id))
        end = max(records, key=lambda rec: rec.finish_ns)
        return ServingResult(
            requests=tuple(records),
            steps=(),  # a server does not expose its steps
            start_ns=start_ns,
            end_ns=end.finish_ns,
            start_wall_ns=start_wall_ns,
            end_wall_ns=end.finish_wall_ns,
            token_ids=None,
        )

    async def _serve(self, requests: list[Request], prompts: dict[str, Any]):
        s = self.settings
        limits = httpx2.Limits(max_connections=self.max_num_seqs,
                               max_keepalive_connections=self.max_num_seqs)  # fmt: skip
        async with httpx2.AsyncClient(headers=_headers(self._key), timeout=_timeout(s),
                                      limits=limits, trust_env=s.trust_env) as client:  # fmt: skip
            gate = asyncio.Semaphore(self.max_num_seqs)
            streams = {r.request_id: Stream(r) for r in requests}
            start = _stamp()
            tasks = [
                asyncio.create_task(self._one(client, gate, streams[r.request_id],
                                              prompts[r.request_id], start[0]))  # fmt: skip
                for r in requests
            ]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if t.exception() is not None]
            if failed:
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                first = failed[0].exception()
                in_flight = len(pending)
                if isinstance(first, ServerError):
                    raise ServerError(
                        f"{first} ({in_flight} other request(s) cancelled; nothing of this serve "
                        "is kept)"
                    ) from first
                raise first
        return streams, start

    async def _one(self, client: httpx2.AsyncClient, gate: asyncio.Semaphore, st: Stream,
                   prompt, start_ns: int) -> None:  # fmt: skip
        s, r = self.settings, st.request
        due_ns = start_ns + round(r.arrival_s * 1e9)
        while (delay_ns := due_ns - time.monotonic_ns()) > 0:
            await asyncio.sleep(delay_ns / 1e9)
        st.arrival = _stamp()
        async with gate:
            st.sent = _stamp()
            body = request_body(s, prompt, r.output_len)
            url = s.url(ENDPOINT_PATHS[s.endpoint])
            what = f"request {r.request_id!r} to {url}"
            try:
                async with asyncio.timeout(s.request_timeout_s):
                    await self._stream(client, url, body, st, what)
            except TimeoutError as exc:
                raise ServerError(
                    f"{what}: not finished within {KEY}.request_timeout_s = "
                    f"{s.request_timeout_s} s ({st.events} events read); raise it, or check the "
                    "server"
                ) from exc
        if st.finish is None or st.usage is None:
            raise ServerError(
                f"{what}: the stream ended after {st.events} events without "
                f"{'a finish_reason' if st.finish is None else 'usage'}; the request did not "
                "finish (a server that sends no usage in streams cannot be measured: it must "
                "take stream_options.include_usage)"
            )
        try:
            prompt_tokens = int(st.usage["prompt_tokens"])
            output_tokens = int(st.usage["completion_tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(f"{what}: usage {st.usage!r} lacks prompt_tokens or "
                              "completion_tokens") from exc  # fmt: skip
        check_lengths(r, prompt_tokens, output_tokens, self.policy, st.finish_reason)

    async def _stream(self, client, url: str, body: dict, st: Stream, what: str) -> None:
        endpoint = self.settings.endpoint
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    text = await response.aread()
                    raise ServerError(f"{what}: HTTP {response.status_code}: {_quote(text)}")
                async for event in httpx2.EventSource(response):
                    now = _stamp()
                    st.events += 1
                    if event.data.strip() == "[DONE]":
                        st.done = True
                        break
                    try:
                        data = json.loads(event.data)
                    except ValueError as exc:
                        raise ServerError(
                            f"{what}: event {st.events} is not JSON: {_quote(event.data)}"
                        ) from exc
                    take_event(st, data, now, endpoint, what)
        except httpx2.TimeoutException as exc:
            raise ServerError(
                f"{what}: no answer for {KEY}.read_timeout_s = {self.settings.read_timeout_s} s "
                f"after {st.events} events ({type(exc).__name__}); the server stalled or is "
                "overloaded: raise read_timeout_s, or check it"
            ) from exc
        except httpx2.SSEError as exc:
            raise ServerError(f"{what}: not a stream of server-sent events ({exc})") from exc
        except httpx2.TransportError as exc:
            raise ServerError(
                f"{what}: the connection failed after {st.events} events "
                f"({type(exc).__name__}: {exc}); the server went down or dropped the stream"
            ) from exc

    # ------------------------------------------------------------ records

    def peak_memory_bytes(self) -> float:
        """NaN: the server's memory is not this process's (ServerGpuWatch records what its
        processes held on its GPUs)."""
        return math.nan

    def describe(self) -> dict[str, Any]:
        """What ran, for meta.json: the settings (no key), what the server said at start, the
        length policy, the HTTP client, and a summary of the last serve's per-request details."""
        d = self.details
        return {
            "backend": "openai_server",
            "settings": self.settings.record(),
            "server": dataclasses.asdict(self.info),
            "max_num_seqs": self.max_num_seqs,
            "lengths_forced": self.policy.output_exact,
            "prompt_tokens_exact": self.policy.prompt_exact,
            "http_client": f"httpx2 {httpx2.__version__}",
            "last_serve": None if not d else {
                "requests": len(d),
                "requests_short": sum(
                    x["output_tokens_served"] < x["output_tokens_asked"] for x in d),
                "first_token_from_finish": sum(x["first_token_from_finish"] for x in d),
                "max_queued_s": max(x["queued_ns"] for x in d) / 1e9,
                "max_arrival_lag_s": max(x["arrival_lag_ns"] for x in d) / 1e9,
            },  # fmt: skip
        }


# ---------------------------------------------------------------- the cell's check


def check_server_result(result: ServingResult, requests: Sequence[Request], where: str,
                        policy: LengthPolicy) -> dict[str, Any]:  # fmt: skip
    """The cell's check of a served result (cell.check_serving_result) with its exact-length rule
    relaxed as `policy` allows; returns what meta.json should record of the lengths.

    The relaxation, and only it: where the lengths were not forced (policy.output_exact False), a
    request may report fewer output tokens than its output_len, at least 1 (check_lengths); where
    prompts did not go as token ids (policy.prompt_exact False), its prompt tokens are the server's
    count, at least 1. Every other rule of check_serving_result holds unchanged (each request once,
    arrival <= first token <= finish on both clocks, inside the window, no arrival before its
    schedule), checked by check_serving_result itself on the result with each record's lengths set
    to its request's once check_lengths has passed them. Raises TokencarbonError naming the request.

    Returns {"lengths_forced", "prompt_tokens_exact", "requests_short", "output_tokens_asked",
    "output_tokens_served", "prompt_tokens_sent", "prompt_tokens_served"}."""
    from tokencarbon.cell import check_serving_result

    by_id = {r.request_id: r for r in requests}
    normal, short = [], 0
    for rec in result.requests:
        req = by_id.get(rec.request_id)
        if req is not None:
            try:
                short += check_lengths(req, rec.input_tokens, rec.output_tokens, policy)
            except ServerError as exc:
                raise TokencarbonError(f"{where}: {exc}") from exc
            rec = dataclasses.replace(
                rec, input_tokens=len(req.prompt), output_tokens=req.output_len
            )
        normal.append(rec)
    check_serving_result(dataclasses.replace(result, requests=tuple(normal)), requests, where)
    served = [rec for rec in result.requests if rec.request_id in by_id]
    return {
        "lengths_forced": policy.output_exact,
        "prompt_tokens_exact": policy.prompt_exact,
        "requests_short": short,
        "output_tokens_asked": sum(by_id[rec.request_id].output_len for rec in served),
        "output_tokens_served": sum(rec.output_tokens for rec in served),
        "prompt_tokens_sent": sum(len(by_id[rec.request_id].prompt) for rec in served),
        "prompt_tokens_served": sum(rec.input_tokens for rec in served),
    }


def text_decoder(tokenizer: str) -> Callable[[Sequence[int]], str]:
    """token ids -> text by `tokenizer` (a local Hugging Face tokenizer directory or a cached hub
    id, offline), every id kept (special tokens too) and no spaces cleaned up, so the server gets
    the text the ids stand for. Raises ConfigError naming the tokenizer when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tokenizer {str(tokenizer)!r}: not a local tokenizer directory nor a model id in the "
            f"Hugging Face cache ({exc}); prompts sent as text need the model family's tokenizer"
        ) from exc

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return decode


def engine_for_cell(options: Mapping[str, Any] | None, *, max_num_seqs: int,
                    tokenizer: str | None = None) -> OpenAIServerEngine:  # fmt: skip
    """The engine a server cell runs: options = config backend.openai_server (server_settings
    checks it), max_num_seqs = the cell's cb{n}, tokenizer = the model family's tokenizer (a
    Hugging Face directory or cached hub id, loaded offline) for text prompts (text_decoder)."""
    settings = server_settings(options)
    decode = None if tokenizer is None else text_decoder(tokenizer)
    return OpenAIServerEngine(settings, max_num_seqs=max_num_seqs, decode=decode)
