"""The pure core: events, read models, folds, the engine and the command deciders. No Faust, aiokafka or aiohttp."""
