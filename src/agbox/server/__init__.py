"""The HTTP edge: AGB's wire protocol over Starlette. Routes are thin; ``wire.WireApi`` does the work."""
