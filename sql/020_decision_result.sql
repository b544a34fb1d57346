-- The whole decision as the engine made it (models.decisions.DecisionResult, JSON): what
-- `nofx autonomous explain` shows once the decision workflow is closed, mode and rollback plan
-- included. Kept current with the other lifecycle columns; NULL on rows from before this file.
ALTER TABLE autonomous_decisions ADD COLUMN result JSONB;
