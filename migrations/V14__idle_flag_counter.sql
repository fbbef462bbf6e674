-- V14: how many listeners are idle, in a sequence writers read cheaply.
--
-- Why: every captured statement asked `EXISTS (SELECT 1 FROM
-- webhooks.listeners WHERE idle)` before deciding to NOTIFY: a query of its
-- own inside the trigger (executor start and end, about 6 us of the ~50 us
-- capture added to a single-row insert here). The count of idle listeners
-- now also lives in this sequence, kept equal to the table by a trigger on
-- webhooks.listeners (sql/20_fanout.sql); a writer reads it with
-- pg_sequence_last_value(), an expression and no query (about 1 us).
-- A sequence is not transactional: a listener going idle is seen by
-- writers no later than its row's commit, which is all the idle protocol
-- needs (the listener still waits until every transaction that could have
-- seen it busy has ended). Unlogged, like webhooks.listeners: after a crash
-- both start empty (a never-set sequence reads as NULL: nobody idle).
CREATE UNLOGGED SEQUENCE webhooks.listeners_idle MINVALUE 0 START 0;
SELECT pg_catalog.setval('webhooks.listeners_idle', count(*), true)
  FROM webhooks.listeners WHERE idle;
