"""Type stubs for aiq: every setting of `run`, `score` and `sql`, each
listed once (the `RunSettings` and `SqlSettings` keyword dictionaries),
with what it means. The settings are the job file's keys and the `aiq sql`
flags (see `aiq run --help`, `aiq sql --help` for the full text).
"""

from os import PathLike
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence, Union, overload

import pyarrow as pa
from typing_extensions import TypedDict, Unpack

from aiq._core import ConfigError as ConfigError, Error as Error, JobError as JobError

__version__: str

_Path = Union[str, PathLike[str]]
_Data = Any  # pyarrow.Table | pyarrow.RecordBatchReader | pandas.DataFrame | __arrow_c_stream__ | Iterable[pyarrow.RecordBatch] | path

class RunSettings(TypedDict, total=False):
    """The job file's keys, as keywords of `run` and `score` (`output` is a
    parameter of `run`)."""

    input: str  # input file (.parquet, .jsonl) when `data` is None
    endpoint: str  # Databricks serving endpoint name, OpenAI-compatible base URL (http(s)://host/v1), a provider ("anthropic", "gemini", "openai", "azure", "bedrock"), or "simulator"
    model: str  # model name sent in the body (OpenAI-compatible servers need one; endpoint="azure": the deployment; endpoint="bedrock": the model id or inference profile)
    base_url: str  # where a provider named by endpoint is, instead of its own API (ANTHROPIC_BASE_URL, AZURE_OPENAI_ENDPOINT)
    api_version: str  # endpoint="azure": a dated API version (the deployments path) or "v1" [2024-10-21]
    task: Literal['chat', 'completions', 'embeddings']  # kind of call [chat]
    system: str  # system prompt template (minijinja over the row's columns)
    prompt: str  # user prompt template: "Summarize: {{text}}"
    prompt2: str  # second text for function="ai_similarity"
    params: Mapping[str, Any]  # passed into the request body: {"max_tokens": 64, "temperature": 0}
    return_type: str  # type of `result` as a Databricks SQL type: STRING, INT, ..., STRUCT<a: STRING>
    response_format: str  # structured output: a JSON schema document or a DDL STRUCT<...>
    function: str  # Databricks AI function to emulate: ai_classify, ai_summarize, ...
    labels: Sequence[str] | str  # labels for ai_classify, ai_extract, ai_mask; or "a,b,c"
    max_words: int  # word limit for ai_summarize [50]
    to_lang: str  # target language for ai_translate
    images: Sequence[str]  # columns holding images sent with the prompt (chat)
    send_empty: bool  # send rows whose prompt renders empty or blank (by default not sent: result null, error_message says why)
    input_format: Literal['rows', 'delta', 'openai-batch']  # how to read the input [rows]
    output_format: Literal['parquet', 'delta', 'openai-batch']  # how to write the output [parquet]
    write_mode: Literal['append', 'overwrite', 'merge']  # how a Delta output takes the rows [append]
    merge_key: Sequence[str] | str  # write_mode="merge": the input columns that identify a row; or "a,b"
    input_version: int  # a Delta input at this version (time travel)
    input_timestamp: str  # a Delta input as of this RFC 3339 time
    fail_on_error: bool  # fail the job on the first row error
    concurrency: int  # requests in flight at most [16]
    rpm: int  # requests per minute the endpoint allows
    tpm: int  # tokens per minute
    itpm: int  # input tokens per minute
    otpm: int  # output tokens per minute (max_tokens reserved, unused part returned)
    qph: int  # queries per hour
    max_tokens_total: int  # stop sending once the job used this many tokens
    max_cost: float  # stop sending once the job cost this many USD (needs prices)
    price_in: float  # USD per million input tokens
    price_out: float  # USD per million output tokens
    price_cached: float  # USD per million cached input tokens [price_in]
    price_cache_write: float  # USD per million input tokens written to the cache [price_in x provider multiplier]
    max_ambiguous_retries: int  # retries after a timeout once sent [1]
    max_retries: int  # retries per request for 429, 408, 5xx, connection faults [8]
    backoff_ms: int  # first retry delay in ms [500]
    timeout: float  # timeout of one attempt in seconds [300]
    api_key_env: str  # environment variable holding the API key [OPENAI_API_KEY]
    profile: str  # ~/.databrickscfg profile
    batch_rows: int  # rows per input batch, the unit of output ordering [1024]
    max_line_bytes: int  # the longest JSONL line read, in bytes; a longer one stops the job before any request [67108864 (64 MiB)]
    batch_size: int  # embeddings: rows per request [1]
    cache_control: bool  # Claude cache_control breakpoint on the static prefix
    no_prompt_cache_key: bool  # do not send prompt_cache_key
    no_warmup: bool  # no warm-up request per prompt prefix
    no_dedup: bool  # send every row's request, even one another row asks too
    stream: bool  # stream replies and record time to first token
    tools: Sequence[Mapping[str, Any]]  # tools (function calling), passed through
    tool_choice: Any  # tool_choice, passed through
    simulator: Mapping[str, Any]  # built-in simulator knobs for endpoint="simulator": latency_ms, itl_ms, ...
    condition: str  # ai_filter: the condition each row's text is checked against
    criterion: str  # ai_score: what the DOUBLE result in [0, 1] measures
    shard: str  # score only shard "K/N" (0-based) of the input, or "auto/N"
    workers: int  # processes sending at once: the rate limits are divided by it [N of shard]
    call_journal: str  # folder of answered calls keyed by request content, shared by runs
    max_repairs: int  # re-asks of a cut-off or mistyped reply [1]
    retry_failed: bool  # resume, re-sending the rows whose outcome was an error
    overwrite: bool  # run even when the output holds this job's finished result, and replace it
    mode: Literal['online', 'batch']  # batch: the provider's Batch API (about half price, within 24 h) [online]
    batch_max_requests: int  # batch mode: requests per batch input file [50000]
    batch_max_bytes: int  # batch mode: bytes per batch input file [200000000]
    poll_secs: float  # batch mode: seconds between polls [30]
    deadline: str  # batch mode: after this long ("2h", "90m") send the rest online
    batch_staging: str  # batch mode on endpoint="bedrock": the S3 prefix (s3://bucket/prefix) for batch records
    bedrock_role_arn: str  # batch mode on endpoint="bedrock": the IAM service role Bedrock reads and writes it as
    bedrock_min_records: int  # batch mode on endpoint="bedrock": the fewest records a batch job takes (AWS quota) [100]
    ca_cert: str  # PEM file of extra certificate authorities to trust (a private CA); SSL_CERT_FILE works too

class SqlSettings(TypedDict, total=False):
    """`aiq sql`'s flags, as keywords of `sql` (`output`, `tables`,
    `restart` and `dry_run` are its parameters)."""

    endpoint: str  # endpoint of the task functions (ai_classify, ...): name, base URL or "simulator"
    model: str  # model name sent in the body (OpenAI-compatible servers need one; endpoint="azure": the deployment; endpoint="bedrock": the model id or inference profile)
    base_url: str  # where a provider named by endpoint is, instead of its own API (ANTHROPIC_BASE_URL, AZURE_OPENAI_ENDPOINT)
    api_version: str  # endpoint="azure": a dated API version (the deployments path) or "v1" [2024-10-21]
    concurrency: int  # AI calls in flight at most, over the whole query [16]
    rpm: int  # requests per minute, over the whole query
    tpm: int  # tokens per minute, over the whole query
    max_retries: int  # retries per call for 429, 408, 5xx, connection faults [8]
    timeout: float  # timeout of one attempt in seconds [300]
    api_key_env: str  # environment variable holding the API key [OPENAI_API_KEY]
    profile: str  # ~/.databrickscfg profile
    max_tokens_total: int  # stop calling once the query (all runs, with output=) used this many tokens
    max_cost: float  # stop calling once the query (all runs, with output=) cost this many USD (needs prices)
    price_in: float  # USD per million input tokens: the summary's cost
    price_out: float  # USD per million output tokens
    price_cached: float  # USD per million cached input tokens [price_in]
    price_cache_write: float  # USD per million input tokens written to the cache [price_in x provider multiplier]
    context_tokens: int  # model context window: ai_agg and ai_summarize_agg split groups to fit [8192]
    output_format: Literal['parquet', 'delta']  # how `output` is written; delta: appended to a Delta table [parquet]

def run(
    data: _Data = None,
    *,
    output: Optional[_Path] = None,
    job: Optional[_Path] = None,
    restart: bool = False,
    quiet: bool = False,
    credentials: Optional[Mapping[str, str]] = None,
    as_: Optional[Literal["arrow", "pandas", "polars"]] = None,
    work_id: Optional[str] = None,
    **settings: Unpack[RunSettings],
) -> Any:
    """Score every row of `data`. Without `output`, the table in the caller's kind
    (pandas in, pandas out with its index; Polars in, Polars out; else a
    pyarrow.Table), or the kind `as_` names; with `output`, a summary dict.
    `work_id` names the rows of `data`: a Delta table that holds their append
    under that name gets nothing twice."""

def score(
    data: _Data,
    *,
    job: Optional[_Path] = None,
    quiet: bool = True,
    credentials: Optional[Mapping[str, str]] = None,
    **settings: Unpack[RunSettings],
) -> Iterator[pa.RecordBatch]:
    """Score `data` as a stream of output batches, in input order."""

@overload
def sql(
    query: str,
    *,
    tables: Optional[Mapping[str, _Data]] = None,
    output: None = None,
    restart: bool = False,
    quiet: bool = True,
    dry_run: Literal[False] = False,
    **settings: Unpack[SqlSettings],
) -> pa.Table:
    """Run a SQL query with ai_query(...) and the AI functions: the result as a pyarrow.Table."""

@overload
def sql(
    query: str,
    *,
    tables: Optional[Mapping[str, _Data]] = None,
    output: _Path,
    restart: bool = False,
    quiet: bool = True,
    dry_run: Literal[False] = False,
    **settings: Unpack[SqlSettings],
) -> None:
    """Run a SQL query and write the result to the Parquet file `output`."""

@overload
def sql(
    query: str,
    *,
    tables: Optional[Mapping[str, _Data]] = None,
    output: Optional[_Path] = None,
    restart: bool = False,
    quiet: bool = True,
    dry_run: Literal[True],
    **settings: Unpack[SqlSettings],
) -> str:
    """Send nothing: the report of how many AI calls the query may make at most."""

class Simulator:
    """The built-in simulator on 127.0.0.1; knobs are `aiq simulate` flags."""
    def __init__(
        self,
        *,
        latency_ms: int = ...,
        itl_ms: float = ...,
        ttft_ms: int = ...,
        prefill_us_per_token: float = ...,
        output_tokens: int = ...,
        rpm: int = ...,
        tpm: int = ...,
        otpm: int = ...,
        burst_seconds: float = ...,
        fault_rate: float = ...,
        faults: str = ...,
        fail_first: int = ...,
        seed: int = ...,
        slow_ms: int = ...,
        embedding_dim: int = ...,
        token: str = ...,
        port: int = ...,
        no_cache: bool = ...,  # no prefix cache: no reply reports cached tokens
        endpoints: str = ...,  # Databricks endpoint names that exist (comma list); others answer 404
        rate_headers: str = ...,  # rate headers on "every" reply, on "on429" only, or "never"
        retry_after: str = ...,  # what a 429 says: "precise" (Retry-After + retry-after-ms), "seconds", "none"
        quirks: str = ...,  # reply shapes unlike OpenAI's (comma list): no-role, bad-usage, negative-usage, no-usage, extra-fields, no-choices
        tls: bool = ...,  # serve HTTPS with a certificate from a test CA made at start
        max_streams: int = ...,  # with tls: concurrent streams per HTTP/2 connection
        batch_turnaround_ms: int = ...,  # Batch API: ms from creating a batch to its last answer
        batch_fail_rate: float = ...,  # Batch API: probability that a line fails with a 500
        batch_expire_first: int = ...,  # Batch API: the first N batches expire part-done
        batch_expire_share: float = ...,  # Batch API: share of its lines an expiring batch answers
        batch_token_cap: int = ...,  # Batch API: enqueued-token cap
        batch_create_delay_ms: int = ...,  # Batch API: delay of the reply to a batch creation
        truncate_rate: float = ...,  # probability that a typed reply is cut off (finish_reason = length)
        mismatch_rate: float = ...,  # probability that a typed reply does not match its schema
        truncate_first: int = ...,  # the first N typed replies are cut off
        mismatch_first: int = ...,  # the N typed replies after those do not match their schema
        context_tokens: int = ...,  # context window: longer prompts answer 400 context_length_exceeded
        echo_headers: bool = ...,  # hostile: every error reply quotes the request's headers (Authorization included)
        error_body_bytes: int = ...,  # hostile: error replies padded to this many bytes, sent without a length
        slots: int = ...,  # requests worked on at once (a server's slots); the rest wait their turn [0: no limit]
        bedrock_s3_endpoint: str = ...,  # Bedrock batch inference: the S3 endpoint its jobs read records from and write results to
        bedrock_min_records: int = ...,  # Bedrock batch inference: a job with fewer records fails validation (AWS's per-job minimum)
        **knobs: Any,
    ) -> None: ...
    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT/v1, to give as endpoint=."""
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Simulator": ...
    def __exit__(self, *exc: Any) -> None: ...
