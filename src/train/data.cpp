// The images of a training run (see data.h).
#include "data.h"
#include "config.h"

#include "fetalhc/image_io.h"
#include "geometry.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace fetalhc::training {

Expected<Sample> load_sample(const Hc18Record& r, cv::Size net, bool keep_full, bool refine) {
    auto img = load_grayscale(r.image_path);
    if (!img) return img.error_value();
    if (r.mask_path.empty()) return make_error(ErrorKind::NotFound, "no mask for '" + r.image_path + "' (expected " + r.filename + " _Mask.png beside it)", "data");
    cv::Mat mask = cv::imread(r.mask_path, cv::IMREAD_GRAYSCALE);
    if (mask.empty() || mask.size() != img->size())
        return make_error(ErrorKind::ImageUnreadable, "mask '" + r.mask_path + "' is unreadable or not the size of its image");
    Sample s;
    s.filename = r.filename;
    s.pixel_size_mm = r.pixel_size_mm;
    s.hc_mm = r.hc_mm;
    const double k = kBaseOversample * std::min(double(net.width) / img->cols, double(net.height) / img->rows);
    const cv::Size bs(std::max(1, int(std::lround(img->cols * k))), std::max(1, int(std::lround(img->rows * k))));
    s.base = resize_area(*img, bs);
    s.base_scale = double(bs.width) / img->cols;
    cv::Mat mf;
    mask.convertTo(mf, CV_32F, 1.0 / 255);
    s.base_mask = resize_area(mf, bs);
    if (keep_full || refine) s.full = *img;
    if (refine) {
        if (!r.has_ellipse)
            return make_error(ErrorKind::InvalidArgument, "the refine stage needs reference ellipses: '" + r.filename +
                                                          "' has none (training_set_ellipses.csv missing?)", "data");
        s.full_mask = mask;
        s.ref = r.ellipse_px;
    }
    return s;
}

namespace {

Expected<std::vector<Sample>> load_samples(const std::vector<Hc18Record>& recs, cv::Size net, bool keep_full, bool refine) {
    std::vector<Sample> out;
    out.reserve(recs.size());
    for (const auto& r : recs) {
        auto s = load_sample(r, net, keep_full, refine);
        if (!s) return s.error_value();
        out.push_back(std::move(*s));
    }
    return out;
}

}  // namespace

Expected<Split> training_split(const TrainConfig& cfg, const TrainOptions& opt) {
    auto recs = read_hc18_training(opt.data_dir);
    if (!recs) return recs.error_value();
    Split split = cfg.folds > 0 ? kfold_split(*recs, cfg.folds, cfg.fold, cfg.split_salt)
                                : grouped_split(*recs, cfg.validation_fraction, cfg.split_salt);
    if (opt.limit > 0) {
        if (int(split.train.size()) > opt.limit) split.train.resize(opt.limit);
        if (int(split.validation.size()) > opt.limit) split.validation.resize(opt.limit);
    }
    if (split.train.empty() || (split.validation.empty() && !trains_on_every_image(cfg)))
        return make_error(ErrorKind::InvalidArgument, "the grouped split of '" + opt.data_dir + "' left an empty side (" +
                                                      std::to_string(split.train.size()) + " train, " + std::to_string(split.validation.size()) +
                                                      " validation); add examinations or change " + (cfg.folds > 0 ? "folds" : "validation_fraction"), "config");
    return split;
}

Expected<TrainingData> load_training_data(const TrainConfig& cfg, const TrainOptions& opt) {
    auto split = training_split(cfg, opt);
    if (!split) return split.error_value();
    TrainingData d;
    d.split = std::move(*split);
    // The masks' boundary lies slightly outside the reference ellipses; the factor that maps one
    // to the other is measured on the training images and stored with the model.
    d.axis_scale = mask_to_reference_scale(d.split.train);
    if (!std::isfinite(d.axis_scale)) d.axis_scale = 1;
    std::fprintf(stderr, "fetalhc train: mask-to-reference axis scale %.5f (training split)\n", d.axis_scale);
    std::fprintf(stderr, "fetalhc train: %zu train / %zu validation images (grouped by examination), loading...\n",
                 d.split.train.size(), d.split.validation.size());
    const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
    const bool refine = cfg.stage == "refine";
    auto train = load_samples(d.split.train, ns, false, refine);
    if (!train) return train.error_value();
    auto validation = load_samples(d.split.validation, ns, true, refine);
    if (!validation) return validation.error_value();
    d.train = std::move(*train);
    d.validation = std::move(*validation);
    return d;
}

void write_text(const std::filesystem::path& p, const std::string& text) {
    const std::filesystem::path tmp = p.string() + ".tmp";
    {
        std::ofstream o(tmp);
        o << text;
    }
    std::filesystem::rename(tmp, p);
}

void write_split_file(const std::filesystem::path& out_dir, const TrainConfig& cfg, const Split& split) {
    nlohmann::json sj{{"salt", cfg.split_salt}, {"validation_fraction", cfg.validation_fraction},
                      {"train", nlohmann::json::array()}, {"validation", nlohmann::json::array()}};
    if (cfg.folds > 0) sj["folds"] = cfg.folds, sj["fold"] = cfg.fold;
    for (const auto& r : split.train) sj["train"].push_back(r.filename);
    for (const auto& r : split.validation) sj["validation"].push_back(r.filename);
    write_text(out_dir / "split.json", sj.dump(1));
}

}  // namespace fetalhc::training
