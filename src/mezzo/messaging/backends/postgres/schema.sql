-- The PostgreSQL broker engine, migration 1: tables and the functions that run its hot paths.
--
-- Everything lives in the schema named by the broker URL (search_path), so one
-- DROP SCHEMA removes it all. Hot paths are PL/pgSQL functions: one round trip
-- per publish, fetch, ack or nack, and the server keeps their plans prepared.
-- Custom SQLSTATEs: MZ404 = topic or group does not exist, MZ429 = too many groups.
-- Function parameters are prefixed (p_) and every body resolves clashes in favour of columns.

CREATE FUNCTION mq_now() RETURNS BIGINT LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE mq_topics (
    id              INT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- a re-created topic gets a new id
    name            TEXT NOT NULL UNIQUE,
    partitions      INT NOT NULL,
    dedup_ms        BIGINT NOT NULL,
    retention_ms    BIGINT NOT NULL,
    retention_bytes BIGINT,                                       -- per partition
    spec            JSONB NOT NULL
);

-- One row per partition: the offset counter publishers lock, and the retained range.
-- Byte positions are running totals of message sizes, so a size cap is a prefix cut.
CREATE TABLE mq_partitions (
    topic_id     INT NOT NULL,
    partition    INT NOT NULL,
    first_offset BIGINT NOT NULL DEFAULT 0,
    next_offset  BIGINT NOT NULL DEFAULT 0,
    first_pos    BIGINT NOT NULL DEFAULT 0,
    next_pos     BIGINT NOT NULL DEFAULT 0,
    last_ts      BIGINT NOT NULL DEFAULT 0,  -- ts_ms never decreases within a partition
    PRIMARY KEY (topic_id, partition)
);

CREATE TABLE mq_messages (
    topic_id  INT NOT NULL,
    partition INT NOT NULL,
    "offset"  BIGINT NOT NULL,
    ts_ms     BIGINT NOT NULL,
    end_pos   BIGINT NOT NULL,
    key       BYTEA,  -- ids and keys are stored as UTF-8 bytes: any string, NUL included
    payload   BYTEA NOT NULL,
    PRIMARY KEY (topic_id, partition, "offset")
);

CREATE TABLE mq_dedup (
    topic_id   INT NOT NULL,
    id         BYTEA NOT NULL,
    partition  INT NOT NULL,
    "offset"   BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (topic_id, id)
);
CREATE INDEX mq_dedup_expiry ON mq_dedup USING brin (expires_ms);  -- rows arrive roughly in expiry order

CREATE TABLE mq_groups (
    id       INT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- a re-created group gets a new id
    topic_id INT NOT NULL,
    name     TEXT NOT NULL,
    UNIQUE (topic_id, name)
);

-- How far a group has read each partition; offsets below read_pos are done or in mq_entries.
CREATE TABLE mq_cursors (
    group_id  INT NOT NULL,
    partition INT NOT NULL,
    read_pos  BIGINT NOT NULL,
    PRIMARY KEY (group_id, partition)
);

-- Messages a group has read but not acked: waiting, in flight, or waiting for a retry.
-- delivery is unique per handing-out (a sequence), so a receipt names exactly one attempt.
-- Per-key order: only the oldest entry of a key (its head) ever has a real due time; the
-- others wait at mq_blocked() until an ack or retention removes the head and a fetch
-- promotes the next one. So a fetch never scans messages queued behind a busy key.
CREATE TABLE mq_entries (
    group_id   INT NOT NULL,
    partition  INT NOT NULL,
    "offset"   BIGINT NOT NULL,
    key        BYTEA,
    attempt    INT NOT NULL DEFAULT 0,
    delivery   BIGINT NOT NULL DEFAULT 0,
    in_flight  BOOLEAN NOT NULL DEFAULT false,
    visible_at BIGINT NOT NULL,  -- due time: load time, ack deadline, end of a nack delay, or blocked
    PRIMARY KEY (group_id, partition, "offset")
);
CREATE INDEX mq_entries_due ON mq_entries (group_id, visible_at);
CREATE INDEX mq_entries_key ON mq_entries (group_id, partition, key, "offset") WHERE key IS NOT NULL;
CREATE SEQUENCE mq_deliveries CACHE 64;

-- Keys whose head entry went (acked, or removed by retention): the next fetch promotes the
-- key's new head while it holds the partition's cursor lock, so no concurrent load can
-- slip a blocked entry past the promotion.
CREATE TABLE mq_released (
    group_id  INT NOT NULL,
    partition INT NOT NULL,
    key       BYTEA NOT NULL,
    PRIMARY KEY (group_id, partition, key)
);

CREATE FUNCTION mq_blocked() RETURNS BIGINT LANGUAGE sql IMMUTABLE AS $$ SELECT 9000000000000000000::BIGINT $$;


-- publish ------------------------------------------------------------------------------

CREATE FUNCTION mq_publish(
    p_topic TEXT, p_ids BYTEA[], p_keys BYTEA[], p_parts INT[], p_stamps BIGINT[], p_payloads BYTEA[],
    p_channel TEXT
) RETURNS TABLE (r_index INT, r_partition INT, r_offset BIGINT, r_duplicate BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t mq_topics%ROWTYPE;
    now_ms BIGINT := mq_now();
    out_i INT[]; out_p INT[]; out_o BIGINT[]; out_d BOOLEAN[];
    stored INT; remembered INT;
BEGIN
    SELECT * INTO t FROM mq_topics WHERE name = p_topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'topic % does not exist', p_topic USING ERRCODE = 'MZ404';
    END IF;
    -- Lock the counters in partition order: publishers of one partition queue here, none deadlock.
    PERFORM 1 FROM mq_partitions
     WHERE topic_id = t.id AND partition IN (SELECT DISTINCT x % t.partitions FROM unnest(p_parts) x)
     ORDER BY partition FOR UPDATE;
    IF NOT FOUND THEN  -- deleted while we looked it up
        RAISE EXCEPTION 'topic % does not exist', p_topic USING ERRCODE = 'MZ404';
    END IF;
    WITH input AS (
        SELECT r.ord::INT AS i, r.id, r.key, r.part % t.partitions AS p, r.ts, r.payload
          FROM unnest(p_ids, p_keys, p_parts, p_stamps, p_payloads) WITH ORDINALITY AS r(id, key, part, ts, payload, ord)
    ), firsts AS (  -- a batch stores each id once
        SELECT DISTINCT ON (id) * FROM input ORDER BY id, i
    ), known AS (   -- ids already stored within the window
        SELECT d.id, d.partition, d."offset" FROM mq_dedup d
         WHERE t.dedup_ms > 0 AND d.topic_id = t.id AND d.expires_ms > now_ms
           AND d.id IN (SELECT id FROM firsts)
    ), fresh AS (
        SELECT f.i, f.id, f.key, f.p, f.payload,
               row_number() OVER w - 1 AS n,
               sum(octet_length(f.payload) + coalesce(octet_length(f.key), 0)) OVER w AS upto,
               max(f.ts) OVER w AS ts
          FROM firsts f
         WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.id = f.id)
        WINDOW w AS (PARTITION BY f.p ORDER BY f.i)
    ), placed AS (
        SELECT f.i, f.id, f.key, f.p, f.payload, m.next_offset + f.n AS o,
               m.next_pos + f.upto AS end_pos, greatest(m.last_ts, f.ts) AS ts
          FROM fresh f JOIN mq_partitions m ON m.topic_id = t.id AND m.partition = f.p
    ), appended AS (
        INSERT INTO mq_messages (topic_id, partition, "offset", ts_ms, end_pos, key, payload)
        SELECT t.id, p, o, ts, end_pos, key, payload FROM placed
        RETURNING 1
    ), moved AS (
        UPDATE mq_partitions m SET next_offset = x.o + 1, next_pos = x.end_pos, last_ts = x.ts
          FROM (SELECT p, max(o) AS o, max(end_pos) AS end_pos, max(ts) AS ts FROM placed GROUP BY p) x
         WHERE m.topic_id = t.id AND m.partition = x.p
    ), noted AS (
        INSERT INTO mq_dedup (topic_id, id, partition, "offset", expires_ms)
        SELECT t.id, pl.id, pl.p, pl.o, now_ms + t.dedup_ms FROM placed pl WHERE t.dedup_ms > 0 ORDER BY pl.id
        ON CONFLICT (topic_id, id) DO UPDATE
           SET partition = EXCLUDED.partition, "offset" = EXCLUDED."offset", expires_ms = EXCLUDED.expires_ms
         WHERE mq_dedup.expires_ms <= now_ms
        RETURNING 1
    ), answer AS (
        SELECT x.i, coalesce(k.partition, pl.p) AS p, coalesce(k."offset", pl.o) AS o,
               (k.id IS NOT NULL OR pl.i <> x.i) AS dup
          FROM input x LEFT JOIN known k ON k.id = x.id LEFT JOIN placed pl ON pl.id = x.id
    )
    SELECT (SELECT array_agg(i ORDER BY i) FROM answer), (SELECT array_agg(p ORDER BY i) FROM answer),
           (SELECT array_agg(o ORDER BY i) FROM answer), (SELECT array_agg(dup ORDER BY i) FROM answer),
           (SELECT count(*) FROM appended), (SELECT count(*) FROM noted)
      INTO out_i, out_p, out_o, out_d, stored, remembered;
    IF t.dedup_ms > 0 AND remembered < stored THEN
        -- another publisher stored one of these ids after our look-up: start again (the caller retries)
        RAISE EXCEPTION 'a concurrent publish stored the same id' USING ERRCODE = '40001';
    END IF;
    IF stored > 0 THEN
        PERFORM pg_notify(p_channel, p_topic);
    END IF;
    RETURN QUERY SELECT * FROM unnest(out_i, out_p, out_o, out_d);
END $$;


-- consumer groups ----------------------------------------------------------------------

CREATE FUNCTION mq_group(p_topic TEXT, p_group TEXT, p_max_groups INT) RETURNS INT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    tid INT;
    gid INT;
BEGIN
    SELECT g.id INTO gid FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
     WHERE t.name = p_topic AND g.name = p_group;
    IF FOUND THEN
        RETURN gid;
    END IF;
    -- Creating a group: one at a time per topic, so the limit holds across nodes.
    SELECT id INTO tid FROM mq_topics WHERE name = p_topic FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'topic % does not exist', p_topic USING ERRCODE = 'MZ404';
    END IF;
    SELECT id INTO gid FROM mq_groups WHERE topic_id = tid AND name = p_group;
    IF FOUND THEN
        RETURN gid;
    END IF;
    IF (SELECT count(*) FROM mq_groups WHERE topic_id = tid) >= p_max_groups THEN
        RAISE EXCEPTION 'topic % already has % consumer groups; delete unused ones', p_topic, p_max_groups
              USING ERRCODE = 'MZ429';
    END IF;
    INSERT INTO mq_groups (topic_id, name) VALUES (tid, p_group) RETURNING id INTO gid;
    INSERT INTO mq_cursors (group_id, partition, read_pos)
    SELECT gid, partition, first_offset FROM mq_partitions WHERE topic_id = tid;
    RETURN gid;
END $$;


-- fetch --------------------------------------------------------------------------------

-- Claims up to p_max due entries, loading more of the log when short. With nothing to
-- deliver it returns one row with partition -1 whose offset is the milliseconds until the
-- next entry falls due (-1: none), so a waiting fetch knows when to look again.
CREATE FUNCTION mq_fetch(p_group INT, p_max INT, p_ack_ms BIGINT, p_chunk INT, p_window BIGINT)
RETURNS TABLE (r_partition INT, r_offset BIGINT, r_ts BIGINT, r_payload BYTEA, r_attempt INT, r_delivery BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    tid INT;
    now_ms BIGINT := mq_now();
    blocked CONSTANT BIGINT := mq_blocked();
    locked INT[];
    got INT := 0;
    step INT;
    rounds INT := 0;
    due BIGINT;
BEGIN
    SELECT topic_id INTO tid FROM mq_groups WHERE id = p_group;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the consumer group or its topic was deleted' USING ERRCODE = 'MZ404';
    END IF;
    -- Promote the next entry of each released key. The cursor locks (taken in partition
    -- order, before this transaction holds anything else) wait for loads in progress, and the
    -- next statement's snapshot then sees every entry they added.
    SELECT array_agg(partition) INTO locked FROM (
        SELECT partition FROM mq_cursors
         WHERE group_id = p_group
           AND partition IN (SELECT partition FROM mq_released WHERE group_id = p_group)
         ORDER BY partition FOR UPDATE) s;
    IF locked IS NOT NULL THEN
        WITH released AS (
            DELETE FROM mq_released WHERE group_id = p_group AND partition = ANY(locked)
            RETURNING partition, key
        ), heads AS (
            SELECT r.partition, (SELECT min(x."offset") FROM mq_entries x
                                  WHERE x.group_id = p_group AND x.partition = r.partition
                                    AND x.key = r.key) AS head
              FROM released r
        )
        UPDATE mq_entries e SET visible_at = now_ms FROM heads h
         WHERE e.group_id = p_group AND e.partition = h.partition AND e."offset" = h.head
           AND e.visible_at = blocked;
    END IF;
    LOOP
        -- Due entries, oldest first. SKIP LOCKED: competing fetches take disjoint rows without waiting.
        RETURN QUERY
        WITH picked AS (
            SELECT e.partition, e."offset" FROM mq_entries e
             WHERE e.group_id = p_group AND e.visible_at <= now_ms
             ORDER BY e.visible_at, e."offset", e.partition
             LIMIT p_max - got
               FOR UPDATE OF e SKIP LOCKED
        ), claimed AS (
            UPDATE mq_entries e
               SET attempt = e.attempt + 1, delivery = nextval('mq_deliveries'), in_flight = true,
                   visible_at = now_ms + p_ack_ms
              FROM picked WHERE e.group_id = p_group AND e.partition = picked.partition
               AND e."offset" = picked."offset"
            RETURNING e.partition, e."offset", e.attempt, e.delivery
        )
        SELECT c.partition, c."offset", m.ts_ms, m.payload, c.attempt, c.delivery
          FROM claimed c JOIN mq_messages m
            ON m.topic_id = tid AND m.partition = c.partition AND m."offset" = c."offset";
        GET DIAGNOSTICS step = ROW_COUNT;
        got := got + step;
        EXIT WHEN got >= p_max OR rounds >= 4;
        rounds := rounds + 1;
        -- Read more of the log into entries. A partition another fetch is loading is skipped.
        -- The lock comes first, in its own statement: the load's snapshot must include every
        -- entry the previous holder of the lock added, or a key could get a second head.
        SELECT array_agg(partition) INTO locked FROM (
            SELECT c.partition FROM mq_cursors c
              JOIN mq_partitions p ON p.topic_id = tid AND p.partition = c.partition
             WHERE c.group_id = p_group AND c.read_pos < p.next_offset
               FOR UPDATE OF c SKIP LOCKED) s;
        EXIT WHEN locked IS NULL;
        -- A group holds at most p_window offsets between its oldest unacked one and read_pos.
        -- A keyed message is blocked when an older entry of its key exists (or precedes it here).
        WITH cur AS (
            SELECT c.partition, greatest(c.read_pos, p.first_offset) AS pos, p.next_offset,
                   least(p_chunk, p_window - (c.read_pos - coalesce(
                       (SELECT min(e."offset") FROM mq_entries e
                         WHERE e.group_id = p_group AND e.partition = c.partition), c.read_pos))) AS room
              FROM mq_cursors c JOIN mq_partitions p ON p.topic_id = tid AND p.partition = c.partition
             WHERE c.group_id = p_group AND c.partition = ANY(locked) AND c.read_pos < p.next_offset
        ), added AS (
            INSERT INTO mq_entries (group_id, partition, "offset", key, visible_at)
            SELECT p_group, cur.partition, m."offset", m.key,
                   CASE WHEN m.key IS NULL THEN now_ms
                        WHEN row_number() OVER (PARTITION BY cur.partition, m.key ORDER BY m."offset") = 1
                         AND NOT EXISTS (SELECT 1 FROM mq_entries b
                                          WHERE b.group_id = p_group AND b.partition = cur.partition
                                            AND b.key = m.key)
                        THEN now_ms
                        ELSE blocked END
              FROM cur CROSS JOIN LATERAL (
                   SELECT m."offset", m.key FROM mq_messages m
                    WHERE m.topic_id = tid AND m.partition = cur.partition
                      AND m."offset" >= cur.pos AND m."offset" < cur.next_offset
                    ORDER BY m."offset" LIMIT greatest(cur.room, 0)) m
            ON CONFLICT DO NOTHING
            RETURNING partition, "offset"
        ), moved AS (
            UPDATE mq_cursors c SET read_pos = x.last + 1
              FROM (SELECT partition, max("offset") AS last FROM added GROUP BY partition) x
             WHERE c.group_id = p_group AND c.partition = x.partition
        )
        SELECT count(*) INTO step FROM added;
        EXIT WHEN step = 0;
    END LOOP;
    IF got = 0 THEN
        SELECT min(visible_at) INTO due FROM mq_entries
         WHERE group_id = p_group AND visible_at > now_ms AND visible_at < blocked;
        r_partition := -1;
        r_offset := coalesce(due - now_ms, -1);
        RETURN NEXT;
    END IF;
END $$;


-- ack / nack ---------------------------------------------------------------------------

CREATE FUNCTION mq_ack(
    p_topic TEXT, p_group TEXT, p_parts INT[], p_offsets BIGINT[], p_deliveries BIGINT[], p_channel TEXT
) RETURNS TABLE (r_partition INT, r_offset BIGINT, r_delivery BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    gid INT;
    done_p INT[]; done_o BIGINT[]; done_d BIGINT[]; keyed BOOLEAN;
BEGIN
    SELECT g.id INTO gid FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
     WHERE t.name = p_topic AND g.name = p_group;
    IF NOT FOUND THEN
        RETURN;  -- no such group: every receipt is stale
    END IF;
    WITH gone AS (
        DELETE FROM mq_entries e
         USING unnest(p_parts, p_offsets, p_deliveries) AS r(p, o, d)
         WHERE e.group_id = gid AND e.partition = r.p AND e."offset" = r.o AND e.delivery = r.d AND e.in_flight
        RETURNING e.partition, e."offset", e.delivery, e.key
    ), released AS (  -- an in-flight entry is its key's head: the next one may go now
        INSERT INTO mq_released (group_id, partition, key)
        SELECT DISTINCT gid, partition, key FROM gone WHERE key IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(partition), array_agg("offset"), array_agg(delivery), bool_or(key IS NOT NULL)
      INTO done_p, done_o, done_d, keyed FROM gone;
    IF keyed THEN
        PERFORM pg_notify(p_channel, p_topic);  -- a fetch promotes the key's next message
    END IF;
    RETURN QUERY SELECT * FROM unnest(done_p, done_o, done_d);
END $$;

CREATE FUNCTION mq_nack(
    p_topic TEXT, p_group TEXT, p_parts INT[], p_offsets BIGINT[], p_deliveries BIGINT[], p_delay_ms BIGINT,
    p_channel TEXT
) RETURNS TABLE (r_partition INT, r_offset BIGINT, r_delivery BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    gid INT;
    done_p INT[]; done_o BIGINT[]; done_d BIGINT[];
BEGIN
    SELECT g.id INTO gid FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
     WHERE t.name = p_topic AND g.name = p_group;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH back AS (
        UPDATE mq_entries e SET in_flight = false, visible_at = mq_now() + p_delay_ms
          FROM unnest(p_parts, p_offsets, p_deliveries) AS r(p, o, d)
         WHERE e.group_id = gid AND e.partition = r.p AND e."offset" = r.o AND e.delivery = r.d AND e.in_flight
        RETURNING e.partition, e."offset", e.delivery
    )
    SELECT array_agg(partition), array_agg("offset"), array_agg(delivery) INTO done_p, done_o, done_d FROM back;
    IF done_p IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_topic);  -- waiting fetches learn the new due time
    END IF;
    RETURN QUERY SELECT * FROM unnest(done_p, done_o, done_d);
END $$;


-- positions ----------------------------------------------------------------------------

-- The first offset whose ts_ms (or, with p_by_pos, end_pos) is at least p_target, by binary
-- search on the primary key: both columns never decrease along a partition.
CREATE FUNCTION mq_offset_at(p_topic_id INT, p_partition INT, p_by_pos BOOLEAN, p_target BIGINT)
RETURNS BIGINT LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    lo BIGINT; hi BIGINT; mid BIGINT; v BIGINT;
BEGIN
    SELECT first_offset, next_offset INTO lo, hi FROM mq_partitions
     WHERE topic_id = p_topic_id AND partition = p_partition;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WHILE lo < hi LOOP
        mid := (lo + hi) / 2;
        SELECT CASE WHEN p_by_pos THEN end_pos ELSE ts_ms END INTO v FROM mq_messages
         WHERE topic_id = p_topic_id AND partition = p_partition AND "offset" = mid;
        IF NOT FOUND OR v < p_target THEN  -- missing: retention just removed it, so it was older
            lo := mid + 1;
        ELSE
            hi := mid;
        END IF;
    END LOOP;
    RETURN lo;
END $$;

CREATE FUNCTION mq_seek(
    p_topic TEXT, p_group TEXT, p_max_groups INT, p_parts INT[], p_offsets BIGINT[], p_channel TEXT
) RETURNS TABLE (r_partition INT, r_offset BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    gid INT := mq_group(p_topic, p_group, p_max_groups);
    tid INT;
BEGIN
    SELECT topic_id INTO tid FROM mq_groups WHERE id = gid;
    -- wait for loads in progress, so none re-adds entries behind the seek
    PERFORM 1 FROM mq_cursors WHERE group_id = gid AND partition = ANY(p_parts) ORDER BY partition FOR UPDATE;
    RETURN QUERY
    WITH target AS (
        SELECT r.p, least(greatest(r.o, m.first_offset), m.next_offset) AS o
          FROM unnest(p_parts, p_offsets) AS r(p, o)
          JOIN mq_partitions m ON m.topic_id = tid AND m.partition = r.p
    ), dropped AS (
        DELETE FROM mq_entries e USING target WHERE e.group_id = gid AND e.partition = target.p
    ), forgotten AS (
        DELETE FROM mq_released r USING target WHERE r.group_id = gid AND r.partition = target.p
    ), moved AS (
        UPDATE mq_cursors c SET read_pos = target.o FROM target
         WHERE c.group_id = gid AND c.partition = target.p
    )
    SELECT p, o FROM target;
    PERFORM pg_notify(p_channel, p_topic);
END $$;


-- retention ----------------------------------------------------------------------------

-- Drops the oldest messages of one partition beyond the topic's age and size limits, and
-- moves every group past them. Returns how many messages went.
CREATE FUNCTION mq_retain(p_topic_id INT, p_partition INT, p_now_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t mq_topics%ROWTYPE;
    part mq_partitions%ROWTYPE;
    cut BIGINT;
    pos BIGINT;
    gone BIGINT;
BEGIN
    SELECT * INTO t FROM mq_topics WHERE id = p_topic_id;
    SELECT * INTO part FROM mq_partitions WHERE topic_id = p_topic_id AND partition = p_partition;
    IF t.id IS NULL OR part.topic_id IS NULL THEN
        RETURN 0;
    END IF;
    cut := mq_offset_at(p_topic_id, p_partition, false, p_now_ms - t.retention_ms);
    IF t.retention_bytes IS NOT NULL AND part.next_pos - part.first_pos > t.retention_bytes THEN
        cut := greatest(cut, mq_offset_at(p_topic_id, p_partition, true, part.next_pos - t.retention_bytes + 1));
    END IF;
    IF cut <= part.first_offset THEN
        RETURN 0;
    END IF;
    SELECT end_pos INTO pos FROM mq_messages
     WHERE topic_id = p_topic_id AND partition = p_partition AND "offset" = cut - 1;
    DELETE FROM mq_messages WHERE topic_id = p_topic_id AND partition = p_partition AND "offset" < cut;
    GET DIAGNOSTICS gone = ROW_COUNT;
    UPDATE mq_partitions SET first_offset = greatest(first_offset, cut), first_pos = greatest(first_pos, coalesce(pos, first_pos))
     WHERE topic_id = p_topic_id AND partition = p_partition;
    -- Lock the cursors (waiting for loads in progress), then drop what they loaded below the cut.
    UPDATE mq_cursors c SET read_pos = greatest(c.read_pos, cut)
      FROM (SELECT id FROM mq_groups WHERE topic_id = p_topic_id ORDER BY id) g
     WHERE c.group_id = g.id AND c.partition = p_partition;
    WITH dropped AS (
        DELETE FROM mq_entries e USING mq_groups g
         WHERE g.topic_id = p_topic_id AND e.group_id = g.id AND e.partition = p_partition AND e."offset" < cut
        RETURNING e.group_id, e.key
    )
    INSERT INTO mq_released (group_id, partition, key)
    SELECT DISTINCT group_id, p_partition, key FROM dropped WHERE key IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN gone;
END $$;
