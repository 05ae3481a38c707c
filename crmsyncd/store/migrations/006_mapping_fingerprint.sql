-- What each entity's mapping said when its state was last brought in line with it: the resource on
-- each side (the path the connector reads) and the match key, and per field (mapping_field.spec)
-- its remote names, direction, rule, transform and whether it is immutable. A start whose mapping
-- differs is told apart field by field: a new or changed field is backfilled by the next pass, a
-- moved resource is refused until `crmsyncd state accept-resource`.
CREATE TABLE mapping_entity (
    entity           text PRIMARY KEY,
    ecosire_resource text NOT NULL,
    crm_resource     text NOT NULL,
    match_key        text,
    saved_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE mapping_field (
    entity text NOT NULL REFERENCES mapping_entity (entity) ON DELETE CASCADE ON UPDATE CASCADE,
    field  text NOT NULL,
    spec   jsonb NOT NULL,
    PRIMARY KEY (entity, field)
);

-- The last full re-read of each entity: a backfill (a mapping change) or a resync (on demand),
-- the fields merged without a base, and its progress. A backfill not finished is run again by the
-- next pass: the fingerprint is saved only with `finished_at`.
CREATE TABLE entity_backfill (
    entity      text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('backfill', 'resync')),
    fields      text[] NOT NULL,
    run_id      bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    progress    jsonb NOT NULL DEFAULT '{}'::jsonb
);

ALTER TABLE sync_run DROP CONSTRAINT sync_run_kind_check;
ALTER TABLE sync_run ADD CONSTRAINT sync_run_kind_check
    CHECK (kind IN ('sync', 'retry', 'reconcile', 'resync'));
