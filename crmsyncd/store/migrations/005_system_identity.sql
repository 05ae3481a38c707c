-- Which systems the state belongs to, one row per side: the record map links ids of one ECOSIRE
-- with ids of one CRM, and the same ids in another system are other people. Recorded at the first
-- start that syncs; a start configured for other systems is refused until `crmsyncd state rebind`.
-- The base URL is stored normalised (scheme, host, port, path), never with credentials or a query.
CREATE TABLE system_identity (
    side        text PRIMARY KEY CHECK (side IN ('ecosire', 'crm')),
    kind        text NOT NULL,
    base_url    text NOT NULL,
    account     text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
