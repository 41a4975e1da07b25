// Bare ps-lite step program for bench/peers/pslite.py: push a float32 gradient, SGD on the
// server (w -= lr * g), pull the weights; one key per 1 MiB block (a smaller table is one key).
//
// One binary for every role: ps-lite reads DMLC_ROLE (scheduler, server, worker) and the
// other DMLC_* variables from the environment. The worker measures, for each size given on
// the command line, two variants on the same table:
//   pushpull: one ZPushPull per step (push and pull fused in one request per server);
//   split:    ZPush, Wait, then ZPull, Wait.
// and prints one line per (size, variant):
//   STEP <variant> <bytes> <steps> <seconds> <median step seconds> <check>
// After the measured steps it checks the pulled weights against the same float arithmetic
// done locally (every step applied exactly once): <check> is "ok" or "MISMATCH".
//
// Usage: pslite_step SECONDS BYTES [BYTES ...]   (all roles take the same arguments)
// Built by bench/peers/pslite.py against $PSLITE_HOME (include/ and build/libps.a).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "ps/ps.h"

namespace {

constexpr float kLr = 0.001f;
constexpr float kGrad = 1e-3f;
constexpr size_t kBlockFloats = (1 << 20) / sizeof(float);  // one key per 1 MiB block

// The server: weights per key; cmd carries the key's length in floats, so a pull of a key
// never seen creates it (zeros). One customer thread runs this handler: no locking needed.
class StepServer {
 public:
  void Handle(const ps::KVMeta& meta, const ps::KVPairs<float>& req, ps::KVServer<float>* server) {
    const size_t nkeys = req.keys.size();
    const size_t len = static_cast<size_t>(meta.cmd);
    if (meta.push) {
      CHECK_EQ(req.vals.size(), nkeys * len) << "push of the wrong length";
      const float* g = req.vals.data();
      for (size_t i = 0; i < nkeys; ++i) {
        float* w = Block(req.keys[i], len);
        const float* gi = g + i * len;
        for (size_t j = 0; j < len; ++j) w[j] -= kLr * gi[j];
      }
    }
    if (!meta.pull) {
      server->Response(meta);
      return;
    }
    // Copy the weights out into a reply buffer, reused once ZeroMQ has let go of it:
    // the stored weights stay private to the server while the reply is on the wire.
    ps::SArray<float>& out = replies_[req.keys[0]];
    if (out.size() != nkeys * len || out.ptr().use_count() > 1) out = ps::SArray<float>(nkeys * len);
    for (size_t i = 0; i < nkeys; ++i) {
      std::copy_n(Block(req.keys[i], len), len, out.data() + i * len);
    }
    ps::KVPairs<float> res;
    res.keys = req.keys;
    res.vals = out;
    server->Response(meta, res);
  }

 private:
  float* Block(ps::Key key, size_t len) {
    auto it = store_.find(key);
    if (it == store_.end()) it = store_.emplace(key, std::vector<float>(len, 0.0f)).first;
    CHECK_EQ(it->second.size(), len) << "key " << key << " has another length";
    return it->second.data();
  }

  std::unordered_map<ps::Key, std::vector<float>> store_;
  std::unordered_map<ps::Key, ps::SArray<float>> replies_;
};

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One table of `bytes` bytes: its keys, a gradient, and the weights the worker pulls into.
struct Table {
  ps::SArray<ps::Key> keys;
  ps::SArray<float> grad;
  ps::SArray<float> weights;
  int len = 0;  // floats per key
  long applied = 0;  // steps the server has applied to this table
};

Table MakeTable(size_t bytes, int index) {
  Table t;
  const size_t n = bytes / sizeof(float);
  const size_t len = std::min(n, kBlockFloats);
  CHECK_EQ(n % len, 0u) << "size must be a multiple of 1 MiB above 1 MiB";
  t.len = static_cast<int>(len);
  // keys of table `index` sit in their own range; sorted, as ps-lite requires
  for (size_t k = 0; k < n / len; ++k) t.keys.push_back((static_cast<ps::Key>(index) << 32) + k);
  t.grad = ps::SArray<float>(n, kGrad);
  t.weights = ps::SArray<float>(n, 0.0f);
  return t;
}

// Warm-up, then steps until both min_time and min_steps are reached (bounded by max_steps):
// the rule of bench/harness.py time_steps.
template <typename Step>
void TimeSteps(const char* variant, size_t bytes, double min_time, Step step, Table* t) {
  const bool big = bytes >= (64u << 20);
  const int warmup = big ? 1 : 2, min_steps = big ? 2 : 3;
  const long max_steps = 1000000;
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> times;
  const auto start = Clock::now();
  auto now = start;
  while ((Seconds(start, now) < min_time || static_cast<int>(times.size()) < min_steps) &&
         static_cast<long>(times.size()) < max_steps) {
    const auto t0 = now;
    step();
    now = Clock::now();
    times.push_back(Seconds(t0, now));
  }
  t->applied += warmup + static_cast<long>(times.size());
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const size_t m = sorted.size();
  const double median = m % 2 ? sorted[m / 2] : (sorted[m / 2 - 1] + sorted[m / 2]) / 2;
  // what the server must hold now: the same float arithmetic, applied `applied` times
  float expect = 0.0f;
  for (long i = 0; i < t->applied; ++i) expect -= kLr * kGrad;
  const bool ok = t->weights[0] == expect && t->weights[t->weights.size() - 1] == expect;
  std::printf("STEP %s %zu %zu %.6f %.9f %s\n", variant, bytes, times.size(), Seconds(start, now), median,
              ok ? "ok" : "MISMATCH");
  std::fflush(stdout);
}

void RunWorker(double min_time, const std::vector<size_t>& sizes) {
  ps::KVWorker<float> kv(0, 0);
  int index = 0;
  for (size_t bytes : sizes) {
    Table t = MakeTable(bytes, index++);
    TimeSteps("pushpull", bytes, min_time, [&] {
      kv.Wait(kv.ZPushPull(t.keys, t.grad, &t.weights, nullptr, t.len));
    }, &t);
    TimeSteps("split", bytes, min_time, [&] {
      kv.Wait(kv.ZPush(t.keys, t.grad, {}, t.len));
      kv.Wait(kv.ZPull(t.keys, &t.weights, nullptr, t.len));
    }, &t);
  }
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SECONDS BYTES [BYTES ...]\n", argv[0]);
    return 2;
  }
  const double min_time = std::atof(argv[1]);
  std::vector<size_t> sizes;
  for (int i = 2; i < argc; ++i) sizes.push_back(std::strtoull(argv[i], nullptr, 10));

  ps::Start(0, argv[0]);
  StepServer* handler = nullptr;
  ps::KVServer<float>* server = nullptr;
  if (ps::IsServer()) {
    handler = new StepServer;
    server = new ps::KVServer<float>(0);
    server->set_request_handle([handler](const ps::KVMeta& m, const ps::KVPairs<float>& d,
                                         ps::KVServer<float>* s) { handler->Handle(m, d, s); });
  }
  if (ps::IsWorker()) RunWorker(min_time, sizes);
  ps::Finalize(0, true);  // a barrier of all nodes: the server and scheduler leave with the worker
  delete server;
  delete handler;
  return 0;
}
