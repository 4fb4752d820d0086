"""What every kvstore process shares: the slot function, the ZooKeeper records and their store, the node client, ops."""
