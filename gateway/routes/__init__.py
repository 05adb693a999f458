"""HTTP route groups; each module exposes `routes(deps) -> list[aiohttp.web.RouteDef]`."""
