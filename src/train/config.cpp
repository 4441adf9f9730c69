// The training config: JSON in and out, and its checks (see config.h).
#include "config.h"

#include <fstream>

namespace fetalhc {
namespace training {
namespace {

using nlohmann::json;

// The keys of each JSON object, in one place for reading and writing.
#define FETALHC_FIELDS_AUG(X) \
    X(flip_horizontal) X(flip_vertical) X(rotate90) X(brightness_min) X(brightness_max) X(blur_sigma_max) \
    X(blur_probability) X(rotate_degrees) X(scale_min) X(scale_max) X(translate) X(contrast_gamma) X(noise_std) \
    X(negative_probability) X(wide_crop_probability) X(wide_scale_max) X(wide_translate)
#define FETALHC_FIELDS_TRAIN(X) \
    X(resize_mode) X(epochs) X(steps_per_epoch) X(validation_steps) X(batch_size) X(optimizer) X(learning_rate) \
    X(schedule) X(warmup_steps) X(step_gamma) X(momentum) X(weight_decay) X(loss_bce) X(loss_dice) X(loss_presence) \
    X(loss_boundary) X(boundary_band) X(ema_decay) X(validation_fraction) X(split_salt) X(seed) X(threads) X(init_weights) X(stage) X(coarse_model) X(crop_margin)
#define FETALHC_FIELDS_NET(X) X(input_width) X(input_height) X(base_channels) X(depth) X(max_channels) X(stem_stride)

std::string read_top_level(const json& j, TrainConfig& c) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& k = it.key();
        bool known = k == "augment" || k == "network" || k == "comment";
        // folds / fold: outside the field list, so that configs without folds write what they always did.
        if (k == "folds") it->get_to(c.folds), known = true;
        if (k == "fold") it->get_to(c.fold), known = true;
        if (k == "keep_last") it->get_to(c.keep_last), known = true;
#define X(f) if (k == #f) it->get_to(c.f), known = true;
        FETALHC_FIELDS_TRAIN(X)
#undef X
        if (!known) return "unknown key '" + k + "'";
    }
    return "";
}

std::string read_augment(const json& j, AugmentConfig& a) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool known = false;
#define X(f) if (it.key() == #f) it->get_to(a.f), known = true;
        FETALHC_FIELDS_AUG(X)
#undef X
        if (!known) return "unknown key 'augment." + it.key() + "'";
    }
    return "";
}

std::string read_network(const json& j, NetworkConfig& n) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool known = false;
#define X(f) if (it.key() == #f) it->get_to(n.f), known = true;
        FETALHC_FIELDS_NET(X)
#undef X
        if (!known) return "unknown key 'network." + it.key() + "'";
    }
    return "";
}

}  // namespace

json config_to_json(const TrainConfig& c) {
    json j, a, n;
#define X(f) j[#f] = c.f;
    FETALHC_FIELDS_TRAIN(X)
#undef X
#define X(f) a[#f] = c.augment.f;
    FETALHC_FIELDS_AUG(X)
#undef X
#define X(f) n[#f] = c.network.f;
    FETALHC_FIELDS_NET(X)
#undef X
    if (c.folds > 0) j["folds"] = c.folds, j["fold"] = c.fold;
    if (c.keep_last) j["keep_last"] = true;
    j["augment"] = a;
    j["network"] = n;
    return j;
}

std::string config_from_json(const json& j, TrainConfig& c) {
    if (!j.is_object()) return "the config must be a JSON object";
    if (auto e = read_top_level(j, c); !e.empty()) return e;
    if (j.contains("augment"))
        if (auto e = read_augment(j["augment"], c.augment); !e.empty()) return e;
    if (j.contains("network"))
        if (auto e = read_network(j["network"], c.network); !e.empty()) return e;
    return validate_config(c);
}

std::string validate_config(const TrainConfig& c) {
    if (c.optimizer != "adam" && c.optimizer != "sgd") return "optimizer must be \"adam\" or \"sgd\"";
    if (c.schedule != "cosine" && c.schedule != "constant" && c.schedule != "step")
        return "schedule must be \"cosine\", \"constant\" or \"step\"";
    if (c.resize_mode != "letterbox") return "resize_mode must be \"letterbox\"";
    if (c.stage != "coarse" && c.stage != "refine") return "stage must be \"coarse\" or \"refine\"";
    if (c.stage == "refine" && c.coarse_model.empty()) return "stage \"refine\" needs coarse_model (a model from a coarse run)";
    if (c.crop_margin < 1.0 || c.crop_margin > 3.0) return "crop_margin must be in [1, 3]";
    if (c.batch_size < 1 || c.epochs < 1 || c.learning_rate <= 0) return "batch_size, epochs and learning_rate must be positive";
    if (c.validation_fraction < 0 || c.validation_fraction >= 1)
        return "validation_fraction must be in [0, 1) (0 = train on every labelled image, no validation)";
    if (trains_on_every_image(c) && !c.keep_last)
        return "validation_fraction 0 (no validation images) needs keep_last: true, since no validation can choose the epoch";
    if (c.folds != 0 && (c.folds < 2 || c.folds > 20)) return "folds must be 0 (plain split) or in [2, 20]";
    if (c.folds == 0 && c.fold != 0) return "fold is set but folds is 0; set folds (e.g. 5) for k-fold cross-validation";
    if (c.folds > 0 && (c.fold < 0 || c.fold >= c.folds)) return "fold must be in [0, folds - 1]";
    if (c.augment.wide_crop_probability < 0 || c.augment.wide_crop_probability > 1 ||
        c.augment.wide_scale_max < c.augment.scale_max || c.augment.wide_translate < 0)
        return "augment: wide_crop_probability must be in [0, 1], wide_scale_max >= scale_max, wide_translate >= 0";
    if (c.loss_boundary < 0 || c.boundary_band < 0 || c.boundary_band > 32)
        return "loss_boundary must be >= 0 and boundary_band in [0, 32] (pixels at the network input size)";
    if (c.ema_decay < 0 || c.ema_decay >= 1) return "ema_decay must be in [0, 1) (0 = no weight averaging)";
    return "";
}

}  // namespace training

Expected<TrainConfig> load_train_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) return make_error(ErrorKind::NotFound, "cannot open training config '" + path + "'; see configs/default.json", "config");
    TrainConfig c;
    try {
        const nlohmann::json j = nlohmann::json::parse(in);
        if (auto e = training::config_from_json(j, c); !e.empty()) return make_error(ErrorKind::InvalidArgument, "training config '" + path + "': " + e, "config");
    } catch (const std::exception& e) {
        return make_error(ErrorKind::InvalidArgument, "training config '" + path + "' is not valid JSON: " + e.what(), "config");
    }
    return c;
}

std::string to_json(const TrainConfig& cfg) { return training::config_to_json(cfg).dump(2); }

}  // namespace fetalhc
