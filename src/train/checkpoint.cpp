// The per-epoch checkpoint of a training run (see checkpoint.h).
#include "checkpoint.h"

#include "data.h"

#include <fstream>

namespace fs = std::filesystem;

namespace fetalhc::training {
namespace {

constexpr const char* kModel = "checkpoint_model.pt";
constexpr const char* kOptim = "checkpoint_optim.pt";
constexpr const char* kEma = "checkpoint_ema.pt";
constexpr const char* kState = "checkpoint.json";

void load_module(const fs::path& p, torch::nn::Module& m) {
    torch::serialize::InputArchive ar;
    ar.load_from(p.string());
    m.load(ar);
}

// Weights and the run's split (metadata read by `model average`), through a temporary file.
void save_weights(const fs::path& p, torch::nn::Module& m, const std::string& split_meta) {
    torch::serialize::OutputArchive ar;
    m.save(ar);
    ar.write("fetalhc_metadata", c10::IValue(split_meta));
    ar.save_to(p.string() + ".tmp");
}

}  // namespace

Expected<RunState> read_checkpoint(const fs::path& out, RunWeights& w) {
    if (!fs::exists(out / kState))
        return make_error(ErrorKind::NotFound,
                          "cannot resume: no checkpoint in '" + out.string() + "' (checkpoint.json missing); start afresh", "resume");
    if (w.ema && !fs::exists(out / kEma))
        return make_error(ErrorKind::InvalidArgument,
                          "cannot resume: '" + out.string() +
                              "' has no checkpoint_ema.pt (the run was started without ema_decay); resume with the same config",
                          "config");
    std::ifstream in(out / kState);
    const nlohmann::json st = nlohmann::json::parse(in);
    RunState s;
    s.epochs_done = st["epoch"];
    s.step = st["step"];
    if (!st["best_hc_mad_mm"].is_null()) s.best_hc_mad_mm = st["best_hc_mad_mm"].get<double>();
    s.history = st["history"];
    s.prior_seconds = st.value("wall_seconds", 0.0);
    load_module(out / kModel, *w.net);
    torch::serialize::InputArchive ao;
    ao.load_from((out / kOptim).string());
    w.optim->load(ao);
    if (w.ema) load_module(out / kEma, *w.ema);
    return s;
}

void write_checkpoint(const fs::path& out, RunWeights& w, const RunState& st, double wall_seconds,
                      const std::string& split_meta) {
    save_weights(out / kModel, *w.net, split_meta);
    torch::serialize::OutputArchive ao;
    w.optim->save(ao);
    ao.save_to((out / (std::string(kOptim) + ".tmp")).string());
    if (w.ema) {
        save_weights(out / kEma, *w.ema, split_meta);
        fs::rename(out / (std::string(kEma) + ".tmp"), out / kEma);
    }
    fs::rename(out / (std::string(kModel) + ".tmp"), out / kModel);
    fs::rename(out / (std::string(kOptim) + ".tmp"), out / kOptim);
    const nlohmann::json js{{"epoch", st.epochs_done}, {"step", st.step}, {"best_hc_mad_mm", st.best_hc_mad_mm},
                            {"history", st.history}, {"wall_seconds", wall_seconds}};
    write_text(out / kState, js.dump(1));
}

}  // namespace fetalhc::training
