"""Verify captured deliveries with the Standard Webhooks reference library.

Reads JSON from stdin: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]}
Prints "verified N" and exits 0 only if every request verifies.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

doc = json.load(sys.stdin)
hook = Webhook(doc["secret"])
for i, req in enumerate(doc["requests"]):
    hook.verify(req["body"], req["headers"])  # raises on any mismatch
print(f"verified {len(doc['requests'])}")
