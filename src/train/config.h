// Internal: the training config as JSON (keys as the fields of TrainConfig in fetalhc/trainer.h)
// and its checks. No LibTorch.
#pragma once

#include "fetalhc/trainer.h"

#include <nlohmann/json.hpp>

#include <string>

namespace fetalhc::training {

// Every field, with "augment" and "network" as nested objects.
nlohmann::json config_to_json(const TrainConfig& c);

// Reads the keys present in `j` into `c` (others keep their values) and checks the result.
// Returns "" or what is wrong; an unknown key is an error (a typo would otherwise be ignored).
std::string config_from_json(const nlohmann::json& j, TrainConfig& c);

// Checks the values of a config (ranges, names of the optimizer, schedule, stage). "" when valid.
std::string validate_config(const TrainConfig& c);

// A plain split with validation_fraction 0: every labelled image trains, none validates.
inline bool trains_on_every_image(const TrainConfig& c) { return c.folds == 0 && c.validation_fraction == 0; }

}  // namespace fetalhc::training
