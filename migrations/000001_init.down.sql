DROP TABLE IF EXISTS leases, idempotency_keys, audit, changes, nics, network_ips, instances,
    join_tokens, nodes, networks, image_tags, images, packages, keys, accounts CASCADE;
