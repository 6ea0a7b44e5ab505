"""The read model's tables: everything here can be rebuilt from the ledger.

Every row carries the tenant it belongs to and every query filters on it.
Times: ``*_seq`` is ledger time (the JetStream sequence), ``*_ts`` the
writer's clock in nanoseconds, and ``valid_from``/``valid_until`` world time
in microseconds since the epoch (NULL = unbounded) — bi-temporal: "what did
the ledger say as of seq N about what held at moment T".
"""

from __future__ import annotations

from typing import Final

#: 3: full-text index with Porter stemming (word forms match); each vote keeps the
#: consensus it led to, for reads as of a seq. 4: the quarantine of events that
#: cannot be applied. 5: fact ids scoped per tenant (unique by tenant and id).
SCHEMA_VERSION: Final = 5

DDL: Final = """
CREATE TABLE IF NOT EXISTS position (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    schema_version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS agents (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    public_key TEXT,
    registered_seq INTEGER NOT NULL,
    registered_ts INTEGER NOT NULL,
    agrees INTEGER NOT NULL DEFAULT 0,
    disagrees INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, agent_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS facts (
    rowid INTEGER PRIMARY KEY,
    fact_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    content TEXT NOT NULL,
    type TEXT NOT NULL,
    tags TEXT NOT NULL,
    confidence REAL NOT NULL,
    source TEXT NOT NULL,
    meta TEXT NOT NULL,
    valid_from INTEGER,
    valid_until INTEGER,
    stored_seq INTEGER NOT NULL,
    stored_ts INTEGER NOT NULL,
    deprecated_seq INTEGER,
    deprecated_ts INTEGER,
    deprecated_by TEXT,
    deprecation_reason TEXT,
    successor_id TEXT,
    UNIQUE (tenant, fact_id)
);
CREATE INDEX IF NOT EXISTS facts_by_tenant ON facts (tenant, stored_seq);
CREATE INDEX IF NOT EXISTS facts_by_successor ON facts (successor_id) WHERE successor_id IS NOT NULL;

-- Apart from facts, so the most frequent update (one per vote) rewrites a
-- narrow row, not the fact with its content. No row: unvoted.
CREATE TABLE IF NOT EXISTS consensus (
    fact_row INTEGER PRIMARY KEY,
    score REAL NOT NULL,
    weight REAL NOT NULL,
    votes_for INTEGER NOT NULL,
    votes_against INTEGER NOT NULL,
    status TEXT NOT NULL,
    consensus_seq INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS votes (
    fact_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    value INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (tenant, fact_id, agent_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS vote_history (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    fact_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    value INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    -- the fact's consensus right after this vote (what an as-of read shows)
    score REAL NOT NULL,
    weight REAL NOT NULL,
    votes_for INTEGER NOT NULL,
    votes_against INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vote_history_by_fact ON vote_history (tenant, fact_id, seq);

-- Every event's chain hash (the Merkle tree's leaves) and the roots of each
-- complete tile of 256 leaves, so a node answers proofs without the stream.
CREATE TABLE IF NOT EXISTS event_hashes (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS event_hashes_by_id ON event_hashes (id);
CREATE TABLE IF NOT EXISTS merkle_tiles (
    tile INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS writer_keys (
    public_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    root TEXT NOT NULL,
    head TEXT NOT NULL,
    public_key TEXT NOT NULL,
    note TEXT NOT NULL
);

-- Events the projector could not apply (projections/quarantine.py).
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE VIRTUAL TABLE IF NOT EXISTS facts_fts USING fts5 (
    content, tags, content='facts', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
"""

#: Tables in digest order, each with the ORDER BY that makes its rows canonical.
DIGEST_TABLES: Final = (
    ("position", "SELECT seq, hash, schema_version FROM position"),
    (
        "agents",
        "SELECT tenant, agent_id, public_key, registered_seq, registered_ts, agrees, disagrees "
        "FROM agents ORDER BY tenant, agent_id",
    ),
    (
        "facts",
        "SELECT fact_id, tenant, agent_id, content, type, tags, confidence, source, meta, "
        "valid_from, valid_until, stored_seq, stored_ts, deprecated_seq, deprecated_ts, "
        "deprecated_by, deprecation_reason, successor_id FROM facts ORDER BY stored_seq",
    ),
    (
        "consensus",
        "SELECT f.fact_id, c.score, c.weight, c.votes_for, c.votes_against, c.status, "
        "c.consensus_seq FROM consensus c JOIN facts f ON f.rowid = c.fact_row "
        "ORDER BY c.fact_row",
    ),
    (
        "votes",
        "SELECT fact_id, agent_id, tenant, value, seq, ts, reason FROM votes "
        "ORDER BY tenant, fact_id, agent_id",
    ),
    (
        "vote_history",
        "SELECT seq, tenant, fact_id, agent_id, value, ts, reason, score, weight, votes_for,"
        " votes_against, status FROM vote_history ORDER BY seq",
    ),
    ("event_hashes", "SELECT seq, id, hash FROM event_hashes ORDER BY seq"),
    ("merkle_tiles", "SELECT tile, hash FROM merkle_tiles ORDER BY tile"),
    ("writer_keys", "SELECT public_key, name, seq FROM writer_keys ORDER BY public_key"),
    (
        "checkpoints",
        "SELECT seq, tree_size, root, head, public_key, note FROM checkpoints ORDER BY seq",
    ),
    ("quarantine", "SELECT seq, reason, detail FROM quarantine ORDER BY seq"),
)
