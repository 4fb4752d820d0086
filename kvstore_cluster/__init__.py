"""What every kvstore process shares: slot hash, cluster model, ZooKeeper layout and store."""
