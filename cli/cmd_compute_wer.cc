// cli/cmd_compute_wer.cc — `moe-asr compute_wer`: scores hypotheses against references and prints
// WeNet's tools/compute-wer.py report and/or Kaldi's compute-wer "%WER" lines (trainer/wer.h).
//   moe-asr compute_wer --ref data/test/text --hyp exp/x/attention_rescoring/text [--mode char]
// WeNet's positional form `compute_wer REF HYP` and its --char 1 work too.
#include <boost/program_options.hpp>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "trainer/wer.h"

namespace moeasr {

int run_compute_wer(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string ref_path, hyp_path, mode = "word", format = "both";
  int wenet_char = 0;
  WerOptions options;
  po::options_description flags("moe-asr compute_wer flags");
  flags.add_options()("help,h", "print this help")(
      "ref", po::value(&ref_path), "reference text: one 'key text' line per utterance (UTF-8)")(
      "hyp", po::value(&hyp_path), "hypothesis text, same layout (e.g. <result_dir>/<mode>/text)")(
      "mode", po::value(&mode), "word (split on whitespace) or char (one token per character)")(
      "char", po::value(&wenet_char), "WeNet's --char: 1 is --mode char")(
      "format", po::value(&format), "wenet (per-utterance alignment and Overall), kaldi (%WER) or both")(
      "case_insensitive", po::bool_switch(&options.case_insensitive), "fold letters to upper case")(
      "remove_punctuation", po::bool_switch(&options.remove_punctuation), "delete Unicode punctuation")(
      "keep_spaces", po::bool_switch(&options.keep_spaces), "char mode: spaces between words are tokens")(
      "remove_tags", po::bool_switch(&options.remove_tags), "delete <...> tags such as <unk>");
  po::positional_options_description positional;
  positional.add("ref", 1).add("hyp", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(flags).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "moe-asr compute_wer: " << e.what() << "\n" << flags;
    return 1;
  }
  if (vm.count("help")) {
    std::cout << "usage: moe-asr compute_wer --ref REF --hyp HYP [flags]\n" << flags;
    return 0;
  }
  if (ref_path.empty() || hyp_path.empty()) {
    std::cerr << "moe-asr compute_wer: both --ref and --hyp are required\n" << flags;
    return 1;
  }
  if (mode == "char" || wenet_char == 1) {
    options.mode = WerMode::kChar;
  } else if (mode != "word") {
    std::cerr << "moe-asr compute_wer: --mode must be 'word' or 'char', got '" << mode << "'\n";
    return 1;
  }
  WerFormat wer_format = WerFormat::kBoth;
  if (format == "wenet") {
    wer_format = WerFormat::kWenet;
  } else if (format == "kaldi") {
    wer_format = WerFormat::kKaldi;
  } else if (format != "both") {
    std::cerr << "moe-asr compute_wer: --format must be 'wenet', 'kaldi' or 'both', got '" << format << "'\n";
    return 1;
  }
  const Status status = compute_wer_files(ref_path, hyp_path, options, wer_format, std::cout, std::cerr);
  if (!status.ok()) {
    std::cerr << "moe-asr compute_wer: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace moeasr
