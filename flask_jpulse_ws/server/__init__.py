"""One process's sockets: the upgrade, namespaces, connections, health, presence."""
