"""The web views every worker serves: routes, responses, OpenAPI, the status page and metrics."""
