"""The broker's SQL outside the schema's functions: calls to them, inspection, and topic upkeep.

asyncpg prepares each statement once per connection and reuses it.
"""

PUBLISH = "SELECT * FROM mq_publish($1, $2::bytea[], $3::bytea[], $4::int[], $5::bigint[], $6::bytea[], $7)"
GROUP = "SELECT mq_group($1, $2, $3)"
FETCH = "SELECT * FROM mq_fetch($1, $2, $3, $4, $5)"
ACK = "SELECT * FROM mq_ack($1, $2, $3::int[], $4::bigint[], $5::bigint[], $6)"
NACK = "SELECT * FROM mq_nack($1, $2, $3::int[], $4::bigint[], $5::bigint[], $6, $7)"
SEEK = "SELECT * FROM mq_seek($1, $2, $3, $4::int[], $5::bigint[], $6)"
RETAIN = "SELECT mq_retain($1, $2, $3)"
NOTIFY = "SELECT pg_notify($1, $2)"

IN_FLIGHT = """
SELECT e.partition, e."offset", e.attempt, e.delivery, m.ts_ms, m.payload
  FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
  CROSS JOIN unnest($3::int[], $4::bigint[], $5::bigint[]) AS r(p, o, d)
  JOIN mq_entries e ON e.group_id = g.id AND e.partition = r.p AND e."offset" = r.o
                   AND e.delivery = r.d AND e.in_flight
  JOIN mq_messages m ON m.topic_id = t.id AND m.partition = e.partition AND m."offset" = e."offset"
 WHERE t.name = $1 AND g.name = $2
"""

PARTITIONS = """
SELECT p.partition, p.first_offset, p.next_offset, p.next_pos - p.first_pos AS bytes
  FROM mq_partitions p JOIN mq_topics t ON t.id = p.topic_id
 WHERE t.name = $1 ORDER BY p.partition
"""

OFFSETS_FOR_TIME = """
SELECT p.partition, mq_offset_at(t.id, p.partition, false, $2) AS "offset"
  FROM mq_partitions p JOIN mq_topics t ON t.id = p.topic_id
 WHERE t.name = $1 ORDER BY p.partition
"""

READ = """
SELECT m."offset", m.ts_ms, m.payload
  FROM mq_messages m JOIN mq_topics t ON t.id = m.topic_id
 WHERE t.name = $1 AND m.partition = $2 AND m."offset" >= $3
 ORDER BY m."offset" LIMIT $4
"""

GROUPS = """
SELECT g.name FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id WHERE t.name = $1 ORDER BY g.name
"""

GROUP_STATS = """
SELECT c.partition, p.next_offset, greatest(c.read_pos, p.first_offset) AS read_pos,
       s.low, s.pending, s.flying
  FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
  JOIN mq_cursors c ON c.group_id = g.id
  JOIN mq_partitions p ON p.topic_id = t.id AND p.partition = c.partition
  CROSS JOIN LATERAL (
       SELECT min(e."offset") AS low, count(*) AS pending, count(*) FILTER (WHERE e.in_flight) AS flying
         FROM mq_entries e WHERE e.group_id = g.id AND e.partition = c.partition) s
 WHERE t.name = $1 AND g.name = $2 ORDER BY c.partition
"""

TOPIC_NAMES = "SELECT name FROM mq_topics"
TOPIC_EXISTS = "SELECT partitions FROM mq_topics WHERE name = $1"
ALL_PARTITIONS = "SELECT topic_id, partition FROM mq_partitions ORDER BY topic_id, partition"
EXPIRE_DEDUP = "DELETE FROM mq_dedup WHERE expires_ms <= mq_now()"

# ensure_topic: partitions only grow; the row lock also orders it with group creation
UPSERT_TOPIC = """
INSERT INTO mq_topics (name, partitions, dedup_ms, retention_ms, retention_bytes, spec)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
ON CONFLICT (name) DO UPDATE
   SET partitions = greatest(mq_topics.partitions, EXCLUDED.partitions), dedup_ms = EXCLUDED.dedup_ms,
       retention_ms = EXCLUDED.retention_ms, retention_bytes = EXCLUDED.retention_bytes,
       spec = EXCLUDED.spec
RETURNING id, partitions
"""
ADD_PARTITIONS = """
INSERT INTO mq_partitions (topic_id, partition) SELECT $1, generate_series(0, $2 - 1)
ON CONFLICT DO NOTHING
"""
ADD_CURSORS = """
INSERT INTO mq_cursors (group_id, partition, read_pos)
SELECT g.id, p.partition, p.first_offset
  FROM mq_groups g JOIN mq_partitions p ON p.topic_id = g.topic_id WHERE g.topic_id = $1
ON CONFLICT DO NOTHING
"""

LOCK_TOPIC = "SELECT id FROM mq_topics WHERE name = $1 FOR UPDATE"
LOCK_TOPIC_PARTITIONS = "SELECT 1 FROM mq_partitions WHERE topic_id = $1 ORDER BY partition FOR UPDATE"
DROP_TOPIC = [
    "DELETE FROM mq_released WHERE group_id IN (SELECT id FROM mq_groups WHERE topic_id = $1)",
    "DELETE FROM mq_entries WHERE group_id IN (SELECT id FROM mq_groups WHERE topic_id = $1)",
    "DELETE FROM mq_cursors WHERE group_id IN (SELECT id FROM mq_groups WHERE topic_id = $1)",
    "DELETE FROM mq_groups WHERE topic_id = $1",
    "DELETE FROM mq_dedup WHERE topic_id = $1",
    "DELETE FROM mq_messages WHERE topic_id = $1",
    "DELETE FROM mq_partitions WHERE topic_id = $1",
    "DELETE FROM mq_topics WHERE id = $1",
]

LOCK_GROUP = """
SELECT g.id FROM mq_groups g JOIN mq_topics t ON t.id = g.topic_id
 WHERE t.name = $1 AND g.name = $2 FOR UPDATE OF g
"""
LOCK_CURSORS = "SELECT 1 FROM mq_cursors WHERE group_id = $1 ORDER BY partition FOR UPDATE"
DROP_GROUP = [
    "DELETE FROM mq_released WHERE group_id = $1",
    "DELETE FROM mq_entries WHERE group_id = $1",
    "DELETE FROM mq_cursors WHERE group_id = $1",
    "DELETE FROM mq_groups WHERE id = $1",
]
