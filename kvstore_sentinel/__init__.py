"""kvstore-sentinel: health probing, leader election and failover for a kvstore cluster."""
