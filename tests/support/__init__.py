"""Real parts the tests start themselves: a throwaway redis-server, a fake upstream
provider (the one fake of the product's surroundings), and an event loop on a thread to host servers that
synchronous clients (the sync ``openai`` SDK) talk to."""
