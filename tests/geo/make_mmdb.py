#!/usr/bin/env python3
"""Builds a small MaxMind-format (GeoIP2-City layout) database for depmap's geolocation test.

  make_mmdb.py OUT.mmdb
127.0.0.8/30 → Norway (NO), 59.91, 10.75; 127.0.0.12/30 → ISO code JP only, 35.68, 139.69.
Uses mmdb-writer (pinned by the test that calls this, in its own venv).
"""
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet

w = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"],
               description="depmap geolocation test", ipv4_compatible=True)
w.insert_network(IPSet(["127.0.0.8/30"]), {
    "country": {"iso_code": "NO", "names": {"en": "Norway"}},
    "location": {"latitude": 59.91, "longitude": 10.75},
})
w.insert_network(IPSet(["127.0.0.12/30"]), {
    "country": {"iso_code": "JP"},
    "location": {"latitude": 35.68, "longitude": 139.69},
})
w.to_db_file(sys.argv[1])
