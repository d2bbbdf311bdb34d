"""DNS providers: each reads a zone (`current`) and applies a plan (`apply`).

Provider modules import their client libraries themselves, so importing this
package needs neither boto3 nor a DNS server.
"""

from mailops.dns.providers.base import ApplyResult, Provider, ProviderError

__all__ = ["ApplyResult", "Provider", "ProviderError"]
