#include "kvtier/eviction/noop_policy.h"

namespace kvtier::eviction {

std::string_view NoopPolicy::name() const { return "noop"; }

void NoopPolicy::OnCreated(std::span<const ObjectKey>) {}
void NoopPolicy::OnTouched(std::span<const ObjectKey>) {}
void NoopPolicy::OnRemoved(std::span<const ObjectKey>) {}
void NoopPolicy::SelectVictims(size_t, const std::function<bool(const ObjectKey&)>&,
                               std::vector<ObjectKey>*) {}

size_t NoopPolicy::size() const { return 0; }
bool NoopPolicy::Contains(const ObjectKey&) const { return false; }

}  // namespace kvtier::eviction
