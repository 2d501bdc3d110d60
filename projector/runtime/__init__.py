"""The Faust runtime: the app, batch delivery, stores, the changelog sink, recovery, topics and Kafka clients."""
