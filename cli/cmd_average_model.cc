// cli/cmd_average_model.cc — `moe-asr average_model`, with the flags of WeNet's
// wenet/bin/average_model.py (trainer/average_model.h):
//   moe-asr average_model --src_path exp/x --dst_model exp/x/avg_5.h5 --num 5 [--val_best]
//       [--mode hybrid|step|epoch] [--min_step N --max_step N] [--min_epoch N --max_epoch N]
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "trainer/average_model.h"

namespace moeasr {

int run_average_model(int argc, char** argv) {
  namespace po = boost::program_options;
  AverageModelOptions options;
  po::options_description flags("moe-asr average_model flags");
  flags.add_options()("help,h", "print this help")("src_path", po::value(&options.src_path),
                                                   "the model directory holding the step_<N>/ checkpoints")(
      "dst_model", po::value(&options.dst_model), "the averaged weights file to write (HDF5, e.g. avg_5.h5)")(
      "num", po::value(&options.num)->default_value(5), "how many checkpoints to average")(
      "val_best", po::bool_switch(&options.val_best),
      "average the --num checkpoints with the lowest cv loss (step_<N>.yaml) instead of the last --num")(
      "mode", po::value(&options.mode)->default_value("hybrid"),
      "hybrid | step (every checkpoint) | epoch (only those saved at an epoch boundary)")(
      "min_epoch", po::value(&options.min_epoch), "only checkpoints of epoch >= this")(
      "max_epoch", po::value(&options.max_epoch), "only checkpoints of epoch <= this")(
      "min_step", po::value(&options.min_step), "only checkpoints of step >= this")(
      "max_step", po::value(&options.max_step), "only checkpoints of step <= this");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(flags).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "moe-asr average_model: " << e.what() << "\n" << flags;
    return 1;
  }
  if (vm.count("help")) {
    std::cout
        << "usage: moe-asr average_model --src_path DIR --dst_model FILE [--num N] [--val_best] [flags]\n"
        << flags;
    return 0;
  }
  if (options.src_path.empty() || options.dst_model.empty()) {
    std::cerr << "moe-asr average_model: both --src_path and --dst_model are required\n" << flags;
    return 1;
  }
  StatusOr<std::vector<CheckpointScore>> chosen = select_checkpoints_to_average(options);
  if (!chosen.ok()) {
    std::cerr << "moe-asr average_model: " << chosen.status().message() << "\n";
    return 1;
  }
  // WeNet prints what it picked: "best val (epoch, step, loss, tag) = [...]" and the path list.
  if (options.val_best) {
    std::cout << "best val (epoch, step, loss, tag) = [";
    for (size_t i = 0; i < chosen.value().size(); ++i) {
      const CheckpointScore& c = chosen.value()[i];
      char loss[32];
      std::snprintf(loss, sizeof(loss), "%.6g", c.cv_loss);
      std::cout << (i ? ", " : "") << "[" << c.epoch << ", " << c.step << ", " << loss << ", '" << c.tag
                << "']";
    }
    std::cout << "]\n";
  }
  std::vector<std::string> dirs;
  std::cout << "[";
  for (size_t i = 0; i < chosen.value().size(); ++i) {
    dirs.push_back(chosen.value()[i].dir);
    std::cout << (i ? ", " : "") << "'" << dirs.back() << "'";
  }
  std::cout << "]\n";
  const Status status = average_checkpoints(dirs, options.dst_model);
  if (!status.ok()) {
    std::cerr << "moe-asr average_model: " << status.message() << "\n";
    return 1;
  }
  std::cout << "Saving to " << options.dst_model << "\n";
  return 0;
}

}  // namespace moeasr
