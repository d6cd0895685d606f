-- Reference counts per kind, computed once at ingest instead of on every read.
ALTER TABLE alert_events ADD COLUMN source_ref_counts TEXT;
