-- Which mapped fields each side's API returned in the first records read (crmsyncd/domain/
-- fieldcheck.py): checked once per entity and side, and again when the mapping's field names on
-- that side (`fields`) change. `unseen` lists the mapped fields none of the `sampled` records held.
CREATE TABLE field_check (
    entity      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('ecosire', 'crm')),
    fields      text[] NOT NULL,
    unseen      text[] NOT NULL,
    sampled     integer NOT NULL,
    run_id      bigint,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, side)
);
