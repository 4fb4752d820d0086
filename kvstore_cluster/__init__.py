"""What every kvstore process shares: slot hash, the records in ZooKeeper and their paths, the store, the node client, ops."""
