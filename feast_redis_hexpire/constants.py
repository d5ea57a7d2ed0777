"""Every name the plugin writes into Redis or reads from a view's tags, in one place."""

# Hash field holding a view's event timestamp: "_ts:<view>" (same name as Feast's built-in store).
TS_FIELD_PREFIX = "_ts:"

# Per key prefix, the hash recording which view owns a feature name shared by several views of one
# entity: "<key_prefix>_fields" (no colon after the prefix, so no "<prefix><entity>:*" pattern
# matches it); hash field "<entity segment>:<feature>" -> owning view. See naming.py.
FIELD_OWNERS_KEY = "_fields"

# Stored values that start with a NUL byte are not plain text (see codec.py).
NULL_VALUE = b"\x00"
PROTO_MARKER = b"\x00P"

# value_layout: packed (codec.py): one hash field per view, named by the view, whose value starts
# with this format byte, then a 4-byte fingerprint of the view's features, then the event time in
# PACKED_TS_WIDTH bytes (microseconds since the epoch plus PACKED_TS_OFFSET, big-endian unsigned,
# so comparing the bytes compares the times).
PACKED_FORMAT = b"\x01"
PACKED_TS_WIDTH = 8
PACKED_TS_OFFSET = 2**63

# Feature-view tags that override the store-wide policy for one view.
TAG_MODE = "hexpire.mode"  # "batch" or "streaming"
TAG_KEY_TTL = "hexpire.key_ttl_seconds"  # batch views: key-level TTL
TAG_FIELD_TTL = "hexpire.field_ttl_seconds"  # streaming views: per-field TTL
KNOWN_TAGS = (TAG_MODE, TAG_KEY_TTL, TAG_FIELD_TTL)  # any other "hexpire." tag is refused
TAG_PREFIX = "hexpire."

# The latest absolute expiry, in unix ms, both servers accept for a hash field: Redis 8.2 refuses
# HPEXPIRE/HPEXPIREAT beyond 2^46 - 1 ms (year 4199) with "invalid expire time"; Valkey 9.1 takes
# anything up to 2^63 - 1. Every TTL setting and tag is bounded by MAX_TTL_SECONDS so that
# "now + TTL" stays below it for centuries (and key TTLs, which both servers take up to ~2^63 ms,
# are held to the same bound: one rule for every TTL).
MAX_FIELD_EXPIRE_AT_MS = 2**46 - 1
MAX_TTL_SECONDS = 10_000_000_000  # about 317 years

# Defaults from the seed: a daily batch cycle and a five-minute streaming freshness window.
DEFAULT_KEY_TTL_SECONDS = 24 * 60 * 60
DEFAULT_FIELD_TTL_SECONDS = 5 * 60

# Characters escaped inside an entity id so a key stays injective and glob-safe.
KEY_SEPARATOR = ":"
COMPOUND_SEPARATOR = "+"

# The optional extra with the embedded servers and the demo's web stack (local-redis, demo).
LOCAL_EXTRA = "feast-redis-hexpire[local]"

# Reads' metrics (reads_total, read_seconds) are tallied in the process and written to
# prometheus_client at most this many seconds after the read (metrics.py): far below any scrape
# interval, and the per-read cost of prometheus_client's multiprocess mode is paid once per flush.
METRICS_FLUSH_SECONDS = 0.5
