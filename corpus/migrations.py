"""Ordered, append-only schema migrations.

Each migration is a function ``mNNN_name(con)`` run in its own transaction and recorded in
``_migrations``; never edit one that has shipped, append a new one. Column meanings are
comments in the migration that creates them.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    """The core tables of DESIGN.md."""
    con.execute(
        """
        CREATE TABLE runs (
            run_id        VARCHAR PRIMARY KEY,  -- 'r' + UTC time + random suffix; sortable
            command       VARCHAR NOT NULL,     -- e.g. 'prompts import', 'collect'
            config        JSON NOT NULL,        -- the fully resolved configuration (no secrets)
            code_version  VARCHAR NOT NULL,     -- package version + git commit when known
            started_at    TIMESTAMPTZ NOT NULL,
            finished_at   TIMESTAMPTZ,
            status        VARCHAR NOT NULL,     -- running | ok | failed | interrupted | killed
            counts        JSON,                 -- what the run wrote, e.g. {"prompts": 120}
            error         VARCHAR,              -- one-line reason when status is not ok
            pid           INTEGER,              -- the process that ran it
            parent_run_id VARCHAR               -- e.g. the evolve run a stage belongs to
        );
        CREATE TABLE prompts (
            prompt_id      VARCHAR PRIMARY KEY, -- schemas.identity.prompt_id(text)
            text           VARCHAR NOT NULL,
            gold_answer    VARCHAR,             -- canonical final answer, NULL if unlabelled
            gold_rationale VARCHAR,             -- worked solution, NULL if none
            source         VARCHAR,             -- e.g. 'gsm8k', 'generated', a file name
            split          VARCHAR,             -- e.g. 'train', 'test'
            meta           JSON,                -- extra fields (benchmark item id, equation …)
            run_id         VARCHAR NOT NULL,    -- the run that first imported it
            created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE calls (
            call_id           VARCHAR PRIMARY KEY, -- hash(model, endpoint, messages, params, sample)
            model             VARCHAR NOT NULL,    -- model spec, e.g. 'openai:gpt-4o-mini'
            endpoint          VARCHAR,             -- base URL without credentials, or NULL
            messages          JSON NOT NULL,       -- the chat request
            params            JSON NOT NULL,       -- generation parameters
            sample_index      INTEGER NOT NULL DEFAULT 0,
            template          VARCHAR,             -- hash of the template that made messages
            purpose           VARCHAR,             -- response | feedback | refinement | eval …
            status            VARCHAR NOT NULL,    -- pending | ok | failed
            response          VARCHAR,             -- the completion text when ok
            finish_reason     VARCHAR,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            cost              DOUBLE,              -- USD from the local price table
            latency           DOUBLE,              -- seconds of the successful attempt
            n_attempts        INTEGER NOT NULL DEFAULT 0,
            error_kind        VARCHAR,             -- last failure class when failed
            error             VARCHAR,             -- last failure message (never a secret)
            possibly_billed   BOOLEAN NOT NULL DEFAULT false, -- was in flight when a job died
            run_id            VARCHAR NOT NULL,    -- the run that first wrote it
            created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
            completed_at      TIMESTAMPTZ
        );
        CREATE TABLE attempts (
            call_id     VARCHAR NOT NULL,
            attempt     INTEGER NOT NULL,          -- 1-based within the run that made it
            status      VARCHAR NOT NULL,          -- ok | retry | failed
            http_status INTEGER,
            error_kind  VARCHAR,                   -- rate_limit | server | timeout | connection | malformed | quota | client …
            error       VARCHAR,
            latency     DOUBLE,
            attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            run_id      VARCHAR NOT NULL
        );
        CREATE TABLE records (
            record_id           VARCHAR PRIMARY KEY, -- schemas.identity.record_id(...)
            prompt_id           VARCHAR NOT NULL,
            kind                VARCHAR NOT NULL,    -- meta | self | qa
            round               INTEGER NOT NULL DEFAULT 0, -- self-evolution round, 0 otherwise
            response            VARCHAR,             -- initial response r (qa: the answer)
            feedback            VARCHAR,             -- feedback f, ending with a verdict line
            verdict             VARCHAR,             -- correct | incorrect | NULL (unparsed)
            verdict_error       VARCHAR,             -- why the verdict could not be parsed
            refinement          VARCHAR,             -- refined response r̂
            responder           VARCHAR,             -- model spec that wrote r
            teacher             VARCHAR,             -- model spec that wrote f and r̂
            response_call_id    VARCHAR,
            feedback_call_id    VARCHAR,
            refinement_call_id  VARCHAR,
            templates           JSON,                -- {"response": hash, "feedback": hash, …}
            parent_record_id    VARCHAR,             -- edits are new versions of a parent
            source              VARCHAR,
            meta                JSON,
            run_id              VARCHAR NOT NULL,
            created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
            CHECK (kind IN ('meta', 'self', 'qa')),
            CHECK (verdict IS NULL OR verdict IN ('correct', 'incorrect'))
        );
        CREATE TABLE decisions (
            run_id     VARCHAR NOT NULL,
            record_id  VARCHAR NOT NULL,
            step       VARCHAR NOT NULL,   -- e.g. 'verdict', 'dedup-near', 'decontam'
            params     JSON,               -- the step's resolved parameters
            passed     BOOLEAN NOT NULL,
            score      DOUBLE,
            reason     VARCHAR,
            detail     JSON,               -- cluster id, keeper, matched n-gram …
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE snapshots (
            snapshot_id  VARCHAR PRIMARY KEY, -- hash(name, content_hash)
            name         VARCHAR NOT NULL UNIQUE,
            parent       VARCHAR,             -- name of the snapshot it was selected from
            selection    JSON NOT NULL,       -- {"where": …, "from": …, "note": …}
            n            INTEGER NOT NULL,
            content_hash VARCHAR NOT NULL,    -- schemas.identity.selection_hash(record ids)
            note         VARCHAR,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE snapshot_records (
            snapshot_id VARCHAR NOT NULL,
            record_id   VARCHAR NOT NULL,
            PRIMARY KEY (snapshot_id, record_id)
        );
        CREATE TABLE models (
            model_id      VARCHAR PRIMARY KEY, -- hash(path, snapshot_hash, config)
            base          VARCHAR NOT NULL,    -- base model name or path
            path          VARCHAR NOT NULL,    -- checkpoint directory
            adapter       BOOLEAN NOT NULL,    -- LoRA adapter (true) or full weights
            snapshot_hash VARCHAR,             -- content_hash of the training snapshot
            config        JSON,                -- resolved trainer config
            metrics       JSON,                -- final training metrics
            run_id        VARCHAR NOT NULL,
            created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE evals (
            eval_id    VARCHAR PRIMARY KEY,
            model      VARCHAR NOT NULL,   -- model spec evaluated
            model_id   VARCHAR,            -- models.model_id when it is a registered checkpoint
            benchmark  VARCHAR NOT NULL,   -- gsm8k | svamp | a file name
            mode       VARCHAR NOT NULL,   -- direct | refine
            n          INTEGER NOT NULL,
            correct    INTEGER NOT NULL,
            accuracy   DOUBLE NOT NULL,
            ci_low     DOUBLE,             -- 95% Wilson interval
            ci_high    DOUBLE,
            config     JSON,
            run_id     VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE eval_items (
            eval_id    VARCHAR NOT NULL,
            item_id    VARCHAR NOT NULL,   -- benchmark item id or prompt_id
            question   VARCHAR,
            gold       VARCHAR,
            prediction VARCHAR,            -- extracted final answer
            response   VARCHAR,            -- full model output used for the prediction
            correct    BOOLEAN NOT NULL,
            detail     JSON,               -- feedback, refinement, call ids, samples …
            PRIMARY KEY (eval_id, item_id)
        );
        """
    )


def m002_views(con: duckdb.DuckDBPyConnection) -> None:
    """Views for the common audit questions."""
    con.execute(
        """
        -- The most recent decision of each step for each record.
        CREATE VIEW latest_decisions AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT d.*, row_number() OVER (
                PARTITION BY record_id, step ORDER BY created_at DESC, run_id DESC) AS rn
            FROM decisions d)
        WHERE rn = 1;
        -- Records joined to their prompt text and gold answer.
        CREATE VIEW records_full AS
        SELECT r.*, p.text AS prompt, p.gold_answer, p.gold_rationale,
               p.source AS prompt_source, p.split
        FROM records r JOIN prompts p USING (prompt_id);
        """
    )


def m003_decision_views(con: duckdb.DuckDBPyConnection) -> None:
    """Views and macros that turn decisions into selections (docs/curate.md has recipes)."""
    con.execute(
        """
        -- Per run and record: did the record pass every step that run applied to it?
        CREATE VIEW record_passed AS
        SELECT run_id, record_id,
               bool_and(passed) AS passed_all,          -- kept by this run
               count(DISTINCT step) AS n_steps,          -- steps of the run that judged it
               coalesce(list(DISTINCT step ORDER BY step) FILTER (WHERE NOT passed), [])
                   AS failed_steps
        FROM decisions GROUP BY run_id, record_id;
        -- Per record: does its latest decision of every step pass (whatever run made it)?
        CREATE VIEW record_latest_passed AS
        SELECT record_id,
               bool_and(passed) AS passed_all,
               count(*) AS n_steps,
               coalesce(list(step ORDER BY step) FILTER (WHERE NOT passed), []) AS failed_steps
        FROM latest_decisions GROUP BY record_id;
        -- The newest successful run of a command, e.g. latest_run('curate filter').
        CREATE MACRO latest_run(cmd) AS (
            SELECT max(run_id) FROM runs WHERE command = cmd AND status = 'ok');
        -- True when run `run` judged the record and it passed every step of that run.
        CREATE MACRO kept_by(rid, run) AS rid IN (
            SELECT record_id FROM decisions WHERE run_id = run
            GROUP BY record_id HAVING bool_and(passed));
        -- True when the record's latest decision of every step it has passes.
        CREATE MACRO kept_latest(rid) AS rid IN (
            SELECT record_id FROM latest_decisions GROUP BY record_id HAVING bool_and(passed));
        -- True when the record's latest decision of step `name` passes.
        CREATE MACRO kept_step(rid, name) AS rid IN (
            SELECT record_id FROM latest_decisions WHERE step = name AND passed);
        """
    )


def m004_audit_views(con: duckdb.DuckDBPyConnection) -> None:
    """Views for auditing: every decision with the command that made it; runs with durations."""
    con.execute(
        """
        -- Every decision of every record, oldest first within a record, with its run's
        -- command: "why was record X dropped?" is
        -- SELECT * FROM decision_log WHERE record_id = 'h1:…' ORDER BY created_at.
        CREATE VIEW decision_log AS
        SELECT d.record_id, d.created_at, d.step, d.passed, d.score, d.reason, d.detail,
               d.params, d.run_id, r.command, r.status AS run_status
        FROM decisions d LEFT JOIN runs r USING (run_id);
        -- Runs with their duration in seconds (NULL while running) and what they wrote.
        CREATE VIEW run_summary AS
        SELECT run_id, command, status, started_at, finished_at,
               epoch(finished_at - started_at) AS seconds, counts, error, code_version,
               parent_run_id, pid
        FROM runs;
        """
    )


def m005_evolve_prompts(con: duckdb.DuckDBPyConnection) -> None:
    """Which prompts each self-evolution round used (``selfevo evolve``)."""
    con.execute(
        """
        CREATE TABLE evolve_prompts (
            evolve    VARCHAR NOT NULL,  -- the evolve name (runs.config.name of 'evolve')
            round     INTEGER NOT NULL,  -- 1-based self-evolution round
            prompt_id VARCHAR NOT NULL,  -- a prompt the round's student answered
            run_id    VARCHAR NOT NULL,  -- the 'evolve generate' stage run that chose it
            PRIMARY KEY (evolve, round, prompt_id)
        );
        """
    )


def m006_model_identity(con: duckdb.DuckDBPyConnection) -> None:
    """Models identified by content and named readably; their folders in path columns only.

    From now on ``models.model_id`` is hash(weights, base, snapshot_hash) (it was
    hash(path, snapshot_hash, config)), ``base`` is the base's readable name (an alias, or its
    folder's name) and ``config`` holds the trainer settings without its folder settings
    (``selfevo/checkpoints.py``). Rows written before keep their ids; their absolute base
    folder moves to ``base_path`` and they get a ``name`` from their folder. ``weights`` of
    those rows stays NULL (a migration reads no files): they are matched by ``path``.
    """
    con.execute(
        """
        ALTER TABLE models ADD COLUMN name VARCHAR;      -- readable name, as hf: specs call it (the folder's name)
        ALTER TABLE models ADD COLUMN weights VARCHAR;   -- weights:<sha> of the checkpoint's files (= calls.endpoint of its calls)
        ALTER TABLE models ADD COLUMN base_path VARCHAR; -- local folder of the base model, NULL for a hub name
        UPDATE models SET name = regexp_extract(rtrim(path, '/'), '[^/]*$');
        UPDATE models SET base_path = base, base = regexp_extract(rtrim(base, '/'), '[^/]*$')
        WHERE base LIKE '/%';
        """
    )


def m007_batches(con: duckdb.DuckDBPyConnection) -> None:
    """Batch generation (``--mode batch|file``): each shard of requests, and its calls.

    From here on ``runs.status`` may also be ``waiting``: the command stopped while its
    batches run (it is not finished; running it again continues).
    """
    con.execute(
        """
        CREATE TABLE batches (
            batch_key      VARCHAR PRIMARY KEY, -- selfevo's id of a shard: hash(model, endpoint, calls, attempt, parent)
            provider       VARCHAR NOT NULL,    -- openai (the Batch API at base_url) | file (--mode file: ingested)
            model          VARCHAR NOT NULL,    -- model spec, e.g. 'openai:gpt-4o-mini'
            endpoint       VARCHAR,             -- calls.endpoint of its calls (credentials stripped)
            base_url       VARCHAR,             -- the URL the batch went to (credentials stripped)
            api_key_env    VARCHAR,             -- NAME of the key's environment variable (never the key)
            purpose        VARCHAR,             -- response | feedback | refinement | answer | …
            attempt        INTEGER NOT NULL,    -- 1 = first submission; +1 per re-submission of leftovers
            parent_key     VARCHAR,             -- the batch whose expired/failed rows this one re-submits
            shard          INTEGER NOT NULL,    -- position among the shards written together
            path           VARCHAR NOT NULL,    -- the local Batch JSONL file (custom_id = call_id)
            n_requests     INTEGER NOT NULL,
            bytes          BIGINT NOT NULL,     -- size of the shard file
            state          VARCHAR NOT NULL,    -- prepared | written | uploaded | validating | in_progress |
                                                -- finalizing | cancelling | completed | expired | failed |
                                                -- cancelled | settled (docs/collect.md "Batch")
            input_file_id  VARCHAR,             -- provider file id of the uploaded shard
            batch_id       VARCHAR,             -- provider batch id (openai: 'batch_…')
            output_file_id VARCHAR,
            error_file_id  VARCHAR,
            n_completed    INTEGER,             -- provider's request_counts.completed (last poll)
            n_failed       INTEGER,             -- provider's request_counts.failed (last poll)
            settled        JSON,                -- what settling found: ok, failed, resubmitted, unknown, duplicates …
            error          VARCHAR,             -- why the batch failed (provider errors), or a local problem
            run_id         VARCHAR NOT NULL,    -- the run that wrote the shard
            created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
            submitted_at   TIMESTAMPTZ,         -- when the provider accepted it
            completed_at   TIMESTAMPTZ,         -- when the provider finished it (any final state)
            settled_at     TIMESTAMPTZ,         -- when every row was in the ledger
            polled_at      TIMESTAMPTZ          -- last poll
        );
        CREATE TABLE batch_calls (
            batch_key   VARCHAR NOT NULL,       -- batches.batch_key
            call_id     VARCHAR NOT NULL,       -- calls.call_id, the line's custom_id
            status      VARCHAR NOT NULL,       -- pending (a call has at most one) | ok | failed |
                                                -- retry (to re-submit) | resubmitted | cancelled
            http_status INTEGER,                -- the line's response status_code
            error_kind  VARCHAR,                -- why the row failed: server | rate_limit | client | batch_expired …
            error       VARCHAR,
            settled_run VARCHAR,                -- the run that settled the row
            PRIMARY KEY (batch_key, call_id)
        );
        """
    )


def m009_refined_verdict(con: duckdb.DuckDBPyConnection) -> None:
    """The student's verdict on its own refinement r̂ (SELF's self-evolution filter).

    A self record of ``evolve`` holds two self-feedbacks: ``feedback``/``verdict`` on the
    first answer r, and these on the refinement r̂ (the same feedback request with r̂ in the
    place of r). Like the call ids they describe the record and are not part of its identity
    (``record_id`` stays the hash of prompt, kind, round, r, f, verdict, r̂). NULL where no
    feedback on r̂ was asked (meta, qa, and self records written before this migration).
    Only ALTER TABLE ADD COLUMN and CREATE VIEW (``records_full`` again, with the new
    columns): DDL a DuckLake store accepts too.
    """
    con.execute(
        """
        ALTER TABLE records ADD COLUMN refined_feedback VARCHAR;         -- feedback on r̂, ending with a verdict line
        ALTER TABLE records ADD COLUMN refined_verdict VARCHAR;          -- correct | incorrect | NULL (unparsed or not asked)
        ALTER TABLE records ADD COLUMN refined_verdict_error VARCHAR;    -- why the verdict on r̂ could not be parsed
        ALTER TABLE records ADD COLUMN refined_feedback_call_id VARCHAR; -- calls.call_id of the feedback on r̂
        -- The same view again: a view's catalog entry keeps the columns it was created with.
        CREATE OR REPLACE VIEW records_full AS
        SELECT r.*, p.text AS prompt, p.gold_answer, p.gold_rationale,
               p.source AS prompt_source, p.split
        FROM records r JOIN prompts p USING (prompt_id);
        """
    )


def m010_run_liveness(con: duckdb.DuckDBPyConnection) -> None:
    """Which machine runs a run, and when it last said it was alive.

    On a DuckLake store several machines write at once, so a ``running`` run whose PID is not
    alive *here* may be alive elsewhere: reaping goes by ``host`` and ``heartbeat_at`` (a
    writer on a lake updates it every minute; ``corpus.store.reap_stale_runs``). The file
    store still reaps by its job lock. Only ALTER TABLE ADD COLUMN: DDL a lake accepts.
    """
    con.execute(
        """
        ALTER TABLE runs ADD COLUMN host VARCHAR;              -- socket.gethostname() of the writer
        ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMPTZ;  -- last sign of life (start, heartbeat)
        """
    )


def m011_snapshot_lake_version(con: duckdb.DuckDBPyConnection) -> None:
    """The DuckLake snapshot a selfevo snapshot was cut from (NULL on a file store).

    ``snapshot export`` on a lake reads the store as of that version, so later writes (or a
    reconciliation) cannot change an old snapshot's bytes. ALTER TABLE ADD COLUMN only.
    """
    con.execute("ALTER TABLE snapshots ADD COLUMN lake_version BIGINT")


def m012_job_locks(con: duckdb.DuckDBPyConnection) -> None:
    """Leases of a job's items on a DuckLake (``corpus.joblock.lake_lease``), e.g. the
    prompts a ``collect`` is working on, so a second collect of them on another machine is
    refused instead of sending their calls again. A file store leaves it empty (its job lock
    already admits one writer). A lake has no key: the serial transaction that takes a lease
    inserts only when no live holder exists, so one row per ``lock_key`` remains.
    """
    con.execute(
        """
        CREATE TABLE job_locks (
            lock_key  VARCHAR PRIMARY KEY,  -- what is held, e.g. 'collect:' + prompt_id
            held_by   VARCHAR NOT NULL,     -- the run holding it, while that run is 'running'
            taken_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


# Tables whose identity no constraint enforces on either back end (m013): the bulk tables.
UNKEYED_IDENTITY = {"prompts": ("prompt_id",), "records": ("record_id",)}


def m013_bulk_tables_without_keys(con: duckdb.DuckDBPyConnection) -> None:
    """``prompts`` and ``records`` lose their PRIMARY KEY on a file store (a lake never had
    one); the key column stays NOT NULL.

    Why: DuckDB keeps a PRIMARY KEY as an in-memory ART index that every insert updates and
    every commit merges and writes out. For the two tables an import fills by the million
    that doubled the insert's cost, added seconds to each COMMIT and grew memory with every
    id (measured in docs/benchmarks.md "Import"). Their identity is kept as on a lake: every
    insert by id goes through ``corpus.inserts`` (anti-join, first wins) under the file's
    one-writer lock, and ``selfevo store check`` finds duplicates on both back ends. Other
    tables keep their keys: they are small, or written a row at a time.

    The table is rebuilt from its own DDL with the key dropped (DuckDB cannot drop a
    constraint); views and macros name tables, so they read the new one unchanged.
    """
    for table in UNKEYED_IDENTITY:
        row = con.execute(
            "SELECT sql FROM duckdb_tables() WHERE table_name = ? AND database_name = "
            "current_database() AND schema_name = current_schema()", [table]).fetchone()
        if row is None or "PRIMARY KEY" not in row[0]:
            continue  # a lake: no key to drop
        ddl = row[0].replace(f"CREATE TABLE {table}(", f"CREATE TABLE {table}_m013(", 1)
        con.execute(ddl.replace(" PRIMARY KEY", " NOT NULL"))
        con.execute(f"INSERT INTO {table}_m013 SELECT * FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_m013 RENAME TO {table}")


def m014_call_sender(con: duckdb.DuckDBPyConnection) -> None:
    """The run that last set a call ``pending`` (NULL: the run that registered it, ``run_id``).

    A run that dies leaves its in-flight calls ``pending``; they are flagged
    ``possibly_billed``. A file store flags every pending call (its next writer holds the
    one job lock, so every pending call is a dead job's). A lake has live writers on other
    machines, so it flags the pending calls of the runs that ended, and needs to know which
    run is sending each: a call registered by a finished run and re-sent by a live one is
    that live run's. ALTER TABLE ADD COLUMN only.
    """
    con.execute("ALTER TABLE calls ADD COLUMN sent_by VARCHAR")


MIGRATIONS: list[Migration] = [
    m001_initial, m002_views, m003_decision_views, m004_audit_views, m005_evolve_prompts,
    m006_model_identity, m007_batches, m009_refined_verdict, m010_run_liveness,
    m011_snapshot_lake_version, m012_job_locks, m013_bulk_tables_without_keys,
    m014_call_sender,
]


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the migrations already applied to this store, in order."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations' "
        "AND table_catalog = current_database()"
    ).fetchone()[0]
    if not exists:
        return []
    return [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]


def unknown_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Migrations applied to this store that this code does not know: a newer selfevo made
    them, and this one must not write to it."""
    known = {m.__name__ for m in MIGRATIONS}
    return [name for name in applied_migrations(con) if name not in known]


def foreign_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables and views of a DuckDB file that has no ``_migrations``: someone else's
    database (empty when the file is new, or is a selfevo store)."""
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database() ORDER BY table_name").fetchall()]
    return [] if "_migrations" in names else names


def pending_migrations(con: duckdb.DuckDBPyConnection) -> list[Migration]:
    """Migrations not yet applied, in order."""
    done = set(applied_migrations(con))
    return [m for m in MIGRATIONS if m.__name__ not in done]


def migrate(con: duckdb.DuckDBPyConnection, upto: int | None = None) -> list[str]:
    """Apply pending migrations (each in its own transaction); returns the names applied.

    ``upto`` stops after that many migrations in total: tests use it to freeze old stores.
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        " name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    names = []
    for m in pending_migrations(con):
        if upto is not None and MIGRATIONS.index(m) >= upto:
            break
        con.execute("BEGIN TRANSACTION")
        try:
            m(con)
            con.execute("INSERT INTO _migrations (name) VALUES (?)", [m.__name__])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        names.append(m.__name__)
    return names
