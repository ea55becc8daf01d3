"""The MCP face: the service as tools for AI assistants (FastMCP), served at http://HOST:MCP_PORT/mcp or stdio."""
