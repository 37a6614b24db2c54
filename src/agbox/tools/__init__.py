"""The MCP tools images offer. Each tool set is a module with a ``TOOLS`` list of ``ToolDef``."""
