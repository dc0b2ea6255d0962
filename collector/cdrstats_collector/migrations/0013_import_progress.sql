-- An import's progress in bytes, kept with its counters: a page served by any collector (not
-- only the one running the import) shows a percentage (bytes_read / file_size).
ALTER TABLE import_job ADD COLUMN bytes_read bigint NOT NULL DEFAULT 0;
