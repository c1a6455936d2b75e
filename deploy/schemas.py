"""The HTTP API's request and response models and its input limits.

Structure (field types, one of ``pairs``/``sequences``, pairs of two) is checked by pydantic, so it appears in the
OpenAPI schema the ingress publishes at ``/openapi.json``. Limits that the server is started with (items per request,
sequence length, letters) and the model's task are checked by :func:`check_inputs`, which raises
:class:`RequestError` carrying the HTTP status and a message that says what to change.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from protpeft.data.alphabet import ESM_LETTERS
from protpeft.predict import clean_sequences
from protpeft.tasks import TASKS

__all__ = [
    "SEQUENCE_PATTERN",
    "letters_pattern",
    "published_limits",
    "AddModelRequest",
    "BatchingReport",
    "ErrorResponse",
    "Health",
    "Limits",
    "ModelsResponse",
    "PredictRequest",
    "PredictResponse",
    "Problem",
    "ReloadResponse",
    "RequestError",
    "ServedModelInfo",
    "StorageReport",
    "VersionChange",
    "check_inputs",
]


class RequestError(Exception):
    """A request the client can fix: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Limits(BaseModel):
    """Per-request limits of a server (``protpeft serve --max-items/--max-length/--letters``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_items: int = Field(64, ge=1)
    """Pairs or sequences per request; larger requests get 413 (split them)."""
    max_length: int = Field(1024, ge=1)
    """Residues per sequence; longer sequences get 413 (models crop at their own ``crop`` anyway)."""
    letters: str = ESM_LETTERS
    """Accepted residue letters (after upper-casing and removing whitespace); a subset of ESM-2's alphabet."""

    @model_validator(mode="after")
    def _letters_known(self) -> Limits:
        unknown = sorted(set(self.letters) - set(ESM_LETTERS))
        if unknown or not self.letters:
            raise ValueError(f"letters must be a non-empty subset of ESM-2's {ESM_LETTERS!r}; unknown: {unknown}")
        return self


def letters_pattern(letters: str) -> str:
    """The JSON-schema pattern of a sequence of ``letters`` (either case; no whitespace, no ``*``)."""
    return f"^[{letters}{letters.lower()}]+$"


def _check_letters(seq: str) -> str:
    """Enforces exactly the published pattern, with a message that names the first refused character."""
    if not re.fullmatch(SEQUENCE_PATTERN, seq):
        if not seq:
            raise ValueError("empty sequence")
        bad = next((i, c) for i, c in enumerate(seq, 1) if c.upper() not in ESM_LETTERS or not c.isascii())
        raise ValueError(f"{bad[1]!r} at position {bad[0]} is not an amino-acid letter (accepted: {ESM_LETTERS}, "
                         "either case, no whitespace)")  # fmt: skip
    return seq


SEQUENCE_PATTERN = letters_pattern(ESM_LETTERS)
Sequence = Annotated[
    str,
    AfterValidator(_check_letters),
    WithJsonSchema({"type": "string", "pattern": SEQUENCE_PATTERN, "description": "Amino-acid letters."}),
]
"""A protein sequence as the API takes it; the server's ``--letters`` and ``--max-length`` narrow it further (its
``/openapi.json`` shows them)."""


def _no_default(schema: dict[str, Any]) -> None:
    """Absent means not given; ``null`` is not accepted, so the schema shows no ``default: null``."""
    schema.pop("default", None)


class PredictRequest(BaseModel):
    """``{"pairs": [[seq_a, seq_b], ...]}`` for a PPI model, ``{"sequences": [seq, ...]}`` for a symmetry model.

    Exactly one of the two is given: the published schema says so with a ``oneOf`` of the two ``required`` sets (the
    other key is then absent, as ``additionalProperties: false`` and non-nullable fields leave no third way), and the
    validator below enforces the same rule.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["pairs"]}, {"required": ["sequences"]}],
            "examples": [
                {"pairs": [["MKTAYIAKQRQISFVKSHFSRQ", "MSEQNNTEMTFQIQRIYTKDIS"]]},
                {"sequences": ["MKTAYIAKQRQISFVKSHFSRQ"]},
            ],
        },
    )

    pairs: list[tuple[Sequence, Sequence]] = Field(  # type: ignore[assignment]  # None: not given (null is refused)
        None, min_length=1, description="Protein pairs (PPI models).", json_schema_extra=_no_default
    )
    sequences: list[Sequence] = Field(  # type: ignore[assignment]
        None, min_length=1, description="Single chains (symmetry models).", json_schema_extra=_no_default
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, strict=True, description="Probability at or above which a label is predicted."
    )

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.pairs is None) == (self.sequences is None):
            raise ValueError('give exactly one of "pairs" (PPI models) or "sequences" (symmetry models)')
        return self


class PredictResponse(BaseModel):
    model: str
    """The served name the request addressed."""
    version: int
    """The registered version that answered."""
    ref: str
    """The reference the server resolves (e.g. ``ppi-lora@champion``)."""
    task: Literal["ppi", "symmetry"]
    label_names: list[str]
    probabilities: list[float] | list[list[float]]
    """One probability per pair (PPI), or one per class per sequence (symmetry), in ``label_names`` order."""
    labels: list[int] | list[list[str]]
    """0/1 per pair (PPI), or the predicted class names per sequence (symmetry)."""


class ServedModelInfo(BaseModel):
    name: str
    ref: str
    version: int
    aliases: list[str]
    task: str | None
    mode: str | None
    base_model: str | None
    base_fingerprint: str | None
    backbone: str
    """``shared base <fingerprint>`` (lora: an adapter on it; frozen: the base itself) or ``own`` (full
    fine-tuning carries its whole backbone, loaded separately)."""
    loaded: bool
    """Held in memory now (models evicted by the per-replica LRU are reloaded on their next request)."""
    metrics: dict[str, float]
    """Final val/test metrics of the version's training run."""


class StorageReport(BaseModel):
    """Parameter storage of the replica, measured on the loaded tensors (deduplicated by storage address)."""

    base_copies: int
    """Distinct shared base backbones in memory."""
    base_bytes: int
    """Bytes of the shared bases' weights actually held."""
    base_bytes_if_separate: int
    """What the same models would hold if each loaded its own copy of its base."""
    adapters: int
    adapter_bytes: int
    head_bytes: int
    own_backbones: int
    """Full fine-tuning versions, each with its own backbone."""
    own_backbone_bytes: int
    rss_bytes: int | None
    """Resident memory of the replica process."""
    pid: int


class BatchingReport(BaseModel):
    """How requests were batched since the replica started."""

    batches: int
    """``@serve.batch`` calls."""
    requests: int
    requests_per_batch: float
    max_requests_per_batch: int
    max_batch_size: int
    model_passes: int
    """Passes of the model thread over the waiting requests (each grouped per model)."""
    requests_per_pass: float


class ModelsResponse(BaseModel):
    models: list[ServedModelInfo]
    storage: StorageReport
    batching: BatchingReport
    limits: Limits


class VersionChange(BaseModel):
    name: str
    ref: str
    old_version: int
    new_version: int


class ReloadResponse(BaseModel):
    changed: list[VersionChange]
    unchanged: list[str]
    errors: dict[str, str]
    """name → why its reference could not be re-resolved or loaded (the old version keeps serving)."""


class Problem(BaseModel):
    loc: list[str]
    """Where in the request (``body``, ``pairs``, ``0`` …)."""
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error answer of this API (4xx): what to change, and for malformed requests each problem found."""

    detail: str
    errors: list[Problem] | None = None


class AddModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ref": "ppi-lora@champion"}]})

    ref: str = Field(description="NAME@alias (followed by /admin/reload), NAME/version or NAME (latest).")


class Health(BaseModel):
    status: Literal["ok"]
    models: list[str]


def check_inputs(request: PredictRequest, task: str, limits: Limits) -> list[tuple[str, ...]]:
    """The request's examples, cleaned (whitespace removed, upper-cased), as tuples of member sequences.

    Raises:
        RequestError: 409 for the wrong input kind for ``task``, 422 for letters that are not accepted, 413 for
            more items or longer sequences than ``limits`` allow.
    """
    given = request.pairs if request.pairs is not None else request.sequences
    if len(given) > limits.max_items:
        raise RequestError(413, f"{len(given)} items in one request; this server accepts at most "
                                f"{limits.max_items}: split the request")  # fmt: skip
    spec = TASKS[task]
    items = getattr(request, spec.inputs)  # the wrong kind answers 409: the schema cannot know a model's task
    if items is None:
        sent = "pairs" if request.pairs is not None else "sequences"
        raise RequestError(409, f'this is a {spec.title} model: send {{"{spec.inputs}": {spec.input_example}}}, '
                                f'not "{sent}"')  # fmt: skip
    members = spec.as_examples(items)  # pydantic has checked the pairs' length
    examples = list(zip(*[clean_or_422([e[m] for e in members], spec.item) for m in range(spec.members)], strict=True))
    for i, example in enumerate(examples):
        for seq in example:
            if len(seq) > limits.max_length:
                raise RequestError(413, f"item {i} holds a sequence of {len(seq)} residues; this server accepts at "
                                        f"most {limits.max_length}")  # fmt: skip
            refused = sorted(set(seq) - set(limits.letters))
            if refused:
                raise RequestError(422, f"item {i} contains {''.join(refused)!r}, which this server does not accept "
                                        f"(accepted letters: {limits.letters})")  # fmt: skip
    return examples


def clean_or_422(sequences: list[str], what: str) -> list[str]:
    """:func:`protpeft.predict.clean_sequences` (the predictor's own rules) with its errors as 422."""
    try:
        return clean_sequences(sequences, what)
    except ValueError as err:
        raise RequestError(422, str(err)) from None


def published_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """``schema`` (an OpenAPI document, changed in place) with this server's limits on ``PredictRequest``: items per
    request, residues and letters per sequence, as :func:`check_inputs` enforces them."""
    request = schema["components"]["schemas"]["PredictRequest"]["properties"]
    sequence = {"type": "string", "pattern": letters_pattern(limits.letters), "maxLength": limits.max_length,
                "description": "Amino-acid letters, either case."}  # fmt: skip
    request["pairs"]["maxItems"] = request["sequences"]["maxItems"] = limits.max_items
    request["pairs"]["items"]["prefixItems"] = [sequence, sequence]
    request["sequences"]["items"] = sequence
    return schema
